"""spann's numba kernels are cached against the whole package, not only their own file."""

import os

from spann.kernels import cache as kernel_cache


def test_kernels_use_the_package_stamped_locator():
    import spann.search.kernels as search
    assert kernel_cache.INSTALLED
    loc = search.search_one._cache._impl.locator
    assert type(loc).__name__ == "SpannPackageLocator"
    assert loc.get_source_stamp() == kernel_cache.package_stamp()


def test_stamp_changes_with_any_source_file(tmp_path):
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "a.py", tmp_path / "sub" / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    s0 = kernel_cache.package_stamp(str(tmp_path))
    assert kernel_cache.package_stamp(str(tmp_path)) == s0
    st = os.stat(b)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # another module changed
    assert kernel_cache.package_stamp(str(tmp_path)) != s0
    (tmp_path / "notes.txt").write_text("not source")
    s1 = kernel_cache.package_stamp(str(tmp_path))
    (tmp_path / "notes.txt").write_text("still not source")
    assert kernel_cache.package_stamp(str(tmp_path)) == s1
