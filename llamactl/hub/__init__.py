"""Everything that talks to the Hugging Face Hub or its cache, and nothing else:

- `listing`: a repository's files, hashes, commit and license family; which files a quant
  tag or a path names; the license texts it publishes;
- `cache`: the Hugging Face cache layout (blobs, snapshots, refs, locks), shared with other
  Hugging Face tools;
- `download`: resumable, sha256-verified downloads into that cache.

What a reference means locally, pulling and registering are llamactl.models' work."""
