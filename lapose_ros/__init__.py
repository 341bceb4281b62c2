"""ROS 2 node publishing LA-Pose visual odometry."""
