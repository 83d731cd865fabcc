"""rclpy nodes around s2r's deploy runtime: policy_node (the robot's controller) and sim_robot_node
(a MuJoCo robot behind the same topics)."""
