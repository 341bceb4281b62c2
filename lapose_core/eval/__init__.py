"""Pose metrics, the classical baseline and the evaluation command."""
