"""LA-Pose model parts."""
