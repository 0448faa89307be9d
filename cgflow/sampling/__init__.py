"""FG sampling with OpenMM: platform choice, CPU pinning, checkpointed walker runs."""
