import sys
from pathlib import Path

# the streams tests share helpers (stream_cases.py) that live beside them
sys.path.insert(0, str(Path(__file__).parent))
