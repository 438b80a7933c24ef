"""reprocodec: learned compression whose bitstreams decode bit-exactly on any hardware.

Core (usable in-process, no gRPC, no torch): `reprocodec.safeguard` (error-bounded decision
protection), `reprocodec.container` (the bitstream container), `reprocodec.checksum`.
Codecs (need the `server` extra): `reprocodec.image`, `reprocodec.pointcloud`.
Services: `reprocodec.server`; light client: `reprocodec.client`.
"""

__version__ = "0.8.2"  # writes bitstream formats 2 to 8 (container.py), reads all seven
