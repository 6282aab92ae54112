"""Package marker so the metric script is installed with optimum-resp (evaluate loads the script file itself)."""
