"""The generated videos (`l2l_jax.video.decode.write_synthetic_video`, what the demo's videos and distill presets
extract and distill from) are the same file, byte for byte, for the same arguments: whatever the process wrote
before, and when two processes write them at the same time on a busy machine. (With x264's AVX-512 kernels a
video's bytes depended on the process's earlier work: written again in the same process, or in another order,
about one video in six came out different, decoded pixels up to 45 levels apart; `decode.ENCODER_OPTIONS`.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: (label, seconds, seed) of the videos each process writes, twice, in its own order; two of them changed
#: bytes on their second writing before the fix
VIDEOS = [(seed % 4, 13, seed) for seed in (17, 18, 50001, 50004)]

WRITER = """
import sys
from pathlib import Path
from l2l_jax.video import decode
out, videos = Path(sys.argv[1]), {videos}
out.mkdir(parents=True, exist_ok=True)
for rep, order in enumerate((videos, videos[::-1] if sys.argv[2] == "reversed" else videos)):
    for label, seconds, seed in order:
        decode.write_synthetic_video(out / f"v{{seed}}_{{rep}}.mp4", label, 4, seconds=seconds, seed=seed)
"""


def test_two_processes_write_the_same_bytes(tmp_path: Path) -> None:
    script = WRITER.format(videos=VIDEOS)
    folders = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(f), order], stderr=subprocess.PIPE, text=True)
             for f, order in zip(folders, ("same", "reversed"), strict=True)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    differ = []
    for _, _, seed in VIDEOS:
        copies = {(f / f"v{seed}_{rep}.mp4").read_bytes() for f in folders for rep in (0, 1)}
        if len(copies) > 1:
            differ.append(f"seed {seed}: {len(copies)} different files of 4")
    assert not differ, f"the same video came out different: {differ}"


def test_the_same_file_in_one_process_and_its_plan(tmp_path: Path) -> None:
    """Written twice in a row: the same bytes; and the returned plan is `synthetic_clip_plan`'s."""
    from l2l_jax.video import decode

    label, seconds, seed = 1, 5, 7
    plans = [decode.write_synthetic_video(tmp_path / f"{k}.mp4", label, 4, seconds=seconds, seed=seed)
             for k in range(2)]
    assert (tmp_path / "0.mp4").read_bytes() == (tmp_path / "1.mp4").read_bytes()
    assert plans[0] == plans[1] == decode.synthetic_clip_plan(label, 4, seconds, seed)
