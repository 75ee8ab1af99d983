"""An independent phantom family, for evaluation only.

Written apart from ``pipelines/synth`` and sharing none of its drawing code (a test holds that):
other shapes, other texture and noise models, other scanner physics. It is never used for
training, for validation or for choosing thresholds or calibration: only ``pipelines.evaluate``
and ``pipelines.make`` read it, after a model is trained, to report how the model does on
studies its own generator did not draw.
"""
