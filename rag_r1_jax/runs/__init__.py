"""Run stages (sft, rl, eval) and the workspace they share."""
