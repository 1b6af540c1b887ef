"""The software storage array: volumes, journals, consistency groups, pairs, snapshots.

This layer knows nothing of Kubernetes, widgets or plots.  Layout:

- ``position``    journal positions and lag reports (value types)
- ``record``      one journal entry on disk and on the wire (sequence, time, checksum)
- ``journal``     a journal volume: checksummed segment files, recovery of a torn tail
- ``blocks``      block devices: volume files, copy-on-write snapshots, writable clones
- ``array``       the array engine: volumes, consistency groups, the commit path, apply
- ``wire``        frames of the replication link (two lanes, channels) and the pair handshake
- ``replication`` the transfer between arrays (one event loop: senders, receivers, copies)
- ``link``        a TCP link emulator (delay, rate, cut) placed between two arrays
- ``httpapi``     the token-checked HTTP/JSON server of the management and control APIs
- ``server``      the array process: data path socket, management API, replication port
- ``client``      clients for the data path and the management API
"""
