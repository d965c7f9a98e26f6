"""What the three-host test found about object storage, kept in make test's
fast suite (no hosts needed): a checkpoint in S3 is recorded as an s3:// URI."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.fs as pafs

from pipeline.checkpoints import uri_of


def test_a_checkpoint_in_object_storage_is_recorded_with_its_scheme():
    # Ray Train's Checkpoint keeps "bucket/prefix/..." beside an S3FileSystem;
    # tagged as is, later stages on other nodes read it as a local folder.
    s3 = pafs.S3FileSystem(anonymous=True, region="us-east-1")
    checkpoint = SimpleNamespace(path="bucket/work/checkpoints/run/checkpoint_1", filesystem=s3)
    assert uri_of(checkpoint) == "s3://bucket/work/checkpoints/run/checkpoint_1"


def test_a_local_checkpoint_stays_a_path():
    local = SimpleNamespace(path="/runs/run/checkpoint_1", filesystem=pafs.LocalFileSystem())
    assert uri_of(local) == "/runs/run/checkpoint_1"
