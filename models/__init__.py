"""Models for the inference cluster, kept on the control node (`cluster.py models ...`).

store.py     the versioned store under the inventory's cache: list, show, get, gc (pure file operations)
importer.py  a local file or directory into the store, with checksums (offline sites, the tests)
hub.py       a Hugging Face repository into the store: revision pinned, resumable, every LFS file's SHA-256 checked
push.py      a stored version onto the nodes' /models, and what each node holds
"""
