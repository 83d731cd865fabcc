"""Serial link to real robots (framing, checksums, pyserial driver) and a firmware emulator.

Not built yet: see the project's issues. Nothing here is imported by training or deploy code.
"""
