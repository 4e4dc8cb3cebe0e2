"""A small text-to-video world (coloured shapes moving on grey) where a base model is pretrained on a
CPU and MotionDirector's effect is measured: `world` makes the clips, `detector` reads them back,
`pretrain` trains the base pipeline. CLI: `python -m utils.toy_world --help`."""
