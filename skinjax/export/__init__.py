"""Handing a trained run over: its model as an ONNX file that onnxruntime runs, with a model card.

`graph` is the function that is exported (uint8 views in, probabilities out), `onnx_file` writes
it, `model_card` describes it and `onnx_run` runs it back for predict.py and evaluate.py.
"""
