"""kill -9 a process that is enrolling in a loop while another process reads: every enrolment it acknowledged
is visible to the reader at once and present after the kill, and nothing half-written is ever visible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from deepmetric.gallery import Gallery

DIM = 32
TEMPLATES = 4

WRITER = textwrap.dedent(f"""
    import sys
    import numpy as np
    from deepmetric.gallery import Gallery

    gallery = Gallery.open(sys.argv[1])
    i = 0
    while True:
        vectors = np.random.default_rng(i).normal(size=({TEMPLATES}, {DIM}))
        gallery.enroll(f"person{{i}}", embeddings=vectors, metadata={{"i": i}})
        print(f"person{{i}}", flush=True)  # acknowledged: enroll() returned after the commit
        i += 1
""")


def test_acknowledged_enrolments_survive_sigkill(tmp_path):
    Gallery.create(tmp_path / "g", embedding_dim=DIM, model_stamp="kill-test").close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "g")], stdout=subprocess.PIPE,
                              text=True, env=env)
    acknowledged = []
    # Kill at a varying point well inside the loop (the writer is mid-transaction most of the time).
    kill_after = 20 + int.from_bytes(os.urandom(1), "little") % 30
    # Meanwhile this process reads concurrently: every acknowledged id must already be visible to it.
    reader = Gallery.open(tmp_path / "g", threshold=0.5)
    for line in writer.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) % 4 == 0:
            assert acknowledged[-1] in reader
            probe = np.random.default_rng(len(acknowledged) - 1).normal(size=(TEMPLATES, DIM)).mean(axis=0)
            assert reader.identify(probe, k=1).identity_id == acknowledged[-1]
        if len(acknowledged) >= kill_after:
            writer.send_signal(signal.SIGKILL)
            break
    reader.close()
    writer.wait(timeout=30)
    rest = writer.stdout.read()  # through the same buffered reader: lines it already pulled in count too
    acknowledged += [line for line in rest.split() if line]
    assert writer.returncode == -signal.SIGKILL
    assert len(acknowledged) >= kill_after

    with Gallery.open(tmp_path / "g", threshold=0.5) as gallery:
        assert gallery.store.integrity_problems() == []
        present = {record.identity_id for record in gallery.list()}
        missing = set(acknowledged) - present
        assert not missing, f"acknowledged but lost after kill -9: {sorted(missing)}"
        # At most the one enrolment in flight may have committed without its acknowledgement reaching us.
        assert len(present - set(acknowledged)) <= 1
        # Every stored identity is whole: its metadata and exactly its TEMPLATES vectors, bit for bit
        # (integrity_problems above already checked counts and centroids against the templates).
        stored: dict[str, list[np.ndarray]] = {}
        for template in gallery.store.templates():
            stored.setdefault(template["identity_id"], []).append(template["vector"])
        assert set(stored) == present
        for identity_id, vectors in stored.items():
            i = int(identity_id.removeprefix("person"))
            assert gallery.get(identity_id).metadata == {"i": i}
            expected = np.random.default_rng(i).normal(size=(TEMPLATES, DIM))
            expected = (expected / np.linalg.norm(expected, axis=1, keepdims=True)).astype(np.float32)
            np.testing.assert_array_equal(np.stack(vectors), expected)
        # The gallery keeps working after the crash.
        gallery.enroll("after-crash", embeddings=np.ones((1, DIM)))
        assert gallery.identify(np.ones(DIM), k=1).identity_id == "after-crash"
