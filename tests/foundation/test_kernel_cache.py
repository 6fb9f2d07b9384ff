from pathlib import Path

import streamrec
from streamrec.kernel_cache import refresh, sources_digest


def _package(tmp_path: Path) -> tuple[Path, Path, Path]:
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "kernels.py").write_text("import numba\n\ndef f(): return 1\n")
    (pkg / "sub" / "inlined.py").write_text("import numba\n\ndef g(): return 2\n")
    (pkg / "cli.py").write_text("def main(): pass\n")
    cached = pkg / "sub" / "__pycache__" / "kernels.f-3.py311.nbi"
    return pkg, cached, pkg / "sub" / "inlined.py"


def test_cached_kernels_survive_until_a_numba_module_changes(tmp_path):
    pkg, cached, inlined = _package(tmp_path)
    cached.write_bytes(b"index")
    assert refresh(pkg)  # no record yet: start clean
    assert not cached.exists()
    cached.write_bytes(b"index")
    assert not refresh(pkg)  # nothing changed: the cache is kept
    assert cached.exists()
    (pkg / "cli.py").write_text("def main(): return 0\n")  # not a numba module
    assert not refresh(pkg) and cached.exists()
    inlined.write_text("import numba\n\ndef g(): return 3\n")  # another module's kernel source
    assert refresh(pkg)
    assert not cached.exists()


def test_digest_covers_every_numba_module_of_streamrec():
    pkg = Path(streamrec.__file__).parent
    before = sources_digest(pkg)
    assert (pkg / "__pycache__" / "numba-sources.sha256").read_text() == before
    assert len(before) == 64
