"""ISO-BMFF (MP4) boxes, read and written without IO: ``box.py`` is the framing every other
module here builds on."""
