"""python -m serve [config.yaml]: run the Serve app from its config file on the local Ray (blocks)."""
import subprocess
import sys
from pathlib import Path

config = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("config.yaml"))
sys.exit(subprocess.call(["serve", "run", config]))
