"""Regenerate every picture in the documentation: run each tutorial, which writes its figures.

    python docs/make_figures.py            # into docs/images/tutorials/ (run directories under runs/tutorials/)

The tutorials train on the built-in data only (digits, procedural shapes), so this needs no
download; it takes a few minutes on a laptop CPU.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIALS = ("vae.py", "wae.py", "point_clouds.py")

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "images" / "tutorials"
    for tutorial in TUTORIALS:
        print(f"== {tutorial}", flush=True)
        subprocess.run([sys.executable, str(HERE / "tutorials" / tutorial), str(out)], check=True)
