"""What sacvit writes to disk and reads back: checkpoints with typed metadata, training
checkpoints as one unit, and the ONNX export format."""
