"""The README's training loop: its ``RandomWindows`` Dataset read by ``DataLoader(num_workers=2)``
through a prefix mount and through the fsspec filesystem, against the real S3 test server. The
class is taken from README.md itself, so the example cannot drift from what is tested."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import zarr
from torch.utils.data import DataLoader  # `make test` installs torch's CPU build into .venv

README = Path(__file__).resolve().parent.parent / "README.md"
ARRAY = "signals/eeg/data"  # (channels, samples) in the test archives: time is the last axis
NAMES = ["a.rkns", "sub/b.rkns"]


def _readme_dataset() -> type:
    text = README.read_text()
    section = text[text.index("### A training loop"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (RandomWindows)", "exec"), namespace)  # noqa: S102
    return namespace["RandomWindows"]


def _check(loader: DataLoader, samples) -> int:
    arrays = {"a.rkns": samples.rkns_a.arrays[ARRAY], "sub/b.rkns": samples.rkns_b.arrays[ARRAY]}
    seen = 0
    for windows, names, starts in loader:
        for window, name, start in zip(windows, names, starts.tolist(), strict=True):
            want = arrays[name][:, start:start + window.shape[-1]]
            np.testing.assert_array_equal(window.numpy(), want, err_msg=f"{name}@{start}")
            seen += 1
    return seen


def test_the_readme_dataset_reads_random_windows_through_the_mount_in_dataloader_workers(
        zm, samples):
    random_windows = _readme_dataset()
    with zm.mounted("s3://data/rec/") as h:
        root = h.mountpoint
        dataset = random_windows(NAMES, lambda n: zarr.open_group(zarr.DirectoryStore(f"{root}/{n}"),
                                                                  mode="r"),
                                 array=ARRAY, time_axis=-1, length=500, windows=64)
        assert _check(DataLoader(dataset, batch_size=8, num_workers=2), samples) == 64


def test_the_readme_dataset_reads_through_the_fsspec_filesystem_in_dataloader_workers(
        s3, samples, tmp_path):
    import fsspec

    opts = {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key,
            "client_kwargs": {"verify": str(s3.ca_bundle), "region_name": s3.region}}
    cohort = fsspec.filesystem("zipmount", fo="s3://data/rec/", target_options=opts,
                               cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
    dataset = _readme_dataset()(NAMES, lambda n: zarr.open_group(cohort.get_mapper(n), mode="r"),
                                array=ARRAY, time_axis=-1, length=500, windows=64)
    assert _check(DataLoader(dataset, batch_size=8, num_workers=2), samples) == 64
