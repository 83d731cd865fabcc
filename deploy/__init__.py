"""Robot-side runtime: PolicySpec, observation builder, ONNX policy, action mapper.

Nothing here imports torch or ROS, so the same code runs in simulated evaluation and on the robot.
"""
