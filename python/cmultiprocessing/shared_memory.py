"""multiprocessing.shared_memory: SharedMemory and ShareableList.

SharedMemory is C (_cmp, on libcmp's named segments): the standard
library's names and files in /dev/shm, so that a segment created by either
is attached by the other, generated names 'psm_' + 8 hex digits as the
standard library's, mode 0600 whatever the umask. Beyond the standard
library, a tracked segment (track=True, the default) is removed once the
whole program that created or attached it is dead even when every one of
its processes, resource tracker included, was killed with SIGKILL, and
never while another living process maps it (see resource_tracker).

ShareableList keeps the standard library's layout in the segment, so that
either side attaches the other's list by name and reads and writes its
items: an 8-byte item count, the items' (count + 1) 8-byte offsets into the
data area, the data area, each item's 8-byte struct format, and each item's
1-byte kind (0 number or bool, 1 str, 2 bytes, 3 None). Item access (get, set, len, iteration) is C
(_cmp/shareable_list.c): each access reads the item's format and kind from
the segment, since the other side may have changed them. Creating and
attaching a list, and the rare formats, stay in Python here.
"""
import os
import secrets
import struct
import types
from functools import partial

from . import _cmp
from ._cmp import SharedMemory, _ShareableListBase

__all__ = ['SharedMemory', 'ShareableList']

# The standard library's module-level names that code (CPython's own tests
# among it) reads or patches.
_USE_POSIX = True
_O_CREX = os.O_CREAT | os.O_EXCL
_SHM_SAFE_NAME_LENGTH = 14
_SHM_NAME_PREFIX = '/psm_'
SharedMemory._flags = os.O_RDWR  # a subclass may add os.O_CREAT
SharedMemory._mode = 0o600


def _make_filename():
    """A fresh random name, '/' first as shm_open takes it. SharedMemory
    draws its names in C; it calls this one only once it is replaced here
    (patched), and then draws again while a name is taken."""
    nbytes = (_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2
    return _SHM_NAME_PREFIX + secrets.token_hex(nbytes)


_cmp._shm_name_maker(_make_filename)

_ENCODING = "utf8"
_ALIGN = 8
_FORMAT_OF = {int: "q", float: "d", bool: "xxxxxxx?", type(None): "xxxxxx?x"}
_STR, _BYTES, _NONE = 1, 2, 3
_q = struct.Struct("q")
_fmt8 = struct.Struct("8s")
_structs = {}


def _struct(fmt):
    s = _structs.get(fmt)
    if s is None:
        s = _structs[fmt] = struct.Struct(fmt)
    return s


def _kind(value):
    if isinstance(value, str):
        return _STR
    if isinstance(value, bytes):
        return _BYTES
    if value is None:
        return _NONE
    return 0


def _decode(kind, raw):
    if kind == 0:
        return raw
    if kind == _STR:
        return raw.rstrip(b'\x00').decode(_ENCODING)
    if kind == _BYTES:
        return raw.rstrip(b'\x00')
    return None


class ShareableList(_ShareableListBase):
    """A list of a fixed length in a shared memory segment, of int, float,
    bool, str, bytes and None items (str and bytes keep the room they were
    created with). ShareableList(sequence) creates one; ShareableList(name=)
    attaches an existing one, the standard library's included."""

    def __init__(self, sequence=None, *, name=None):
        if name is None or sequence is not None:
            items = list(sequence or ())
            formats = []
            for item in items:
                if isinstance(item, (str, bytes)):
                    # room as the standard library gives it: by length in
                    # characters, rounded up to the next 8
                    formats.append("%ds" % (_ALIGN * (len(item) // _ALIGN + 1)))
                else:
                    formats.append(_FORMAT_OF[type(item)])
            n = len(items)
            offsets = [0]
            for fmt in formats:
                offsets.append(offsets[-1] + (int(fmt[:-1]) if fmt[-1] == "s" else _ALIGN))
            size = 8 + 8 * (n + 1) + offsets[-1] + 8 * n + n
            self.shm = SharedMemory(name, create=True, size=size)
            self._layout(n, offsets)
            buf = self.shm.buf
            struct.pack_into("%dq" % (n + 2), buf, 0, n, *offsets)
            for i, (item, fmt) in enumerate(zip(items, formats)):
                value = item.encode(_ENCODING) if isinstance(item, str) else item
                _struct(fmt).pack_into(buf, self._data + offsets[i], value)
                _fmt8.pack_into(buf, self._formats + 8 * i, fmt.encode(_ENCODING))
                buf[self._kinds + i] = _kind(item)
        else:
            self.shm = SharedMemory(name)
            buf = self.shm.buf
            n = _q.unpack_from(buf, 0)[0]
            self._layout(n, list(struct.unpack_from("%dq" % (n + 1), buf, 8)))

    def _layout(self, n, offsets):
        _ShareableListBase._layout(self, n, offsets)
        self._list_len = n
        self._allocated_offsets = offsets
        self._data = 8 * (n + 2)
        self._formats = self._data + offsets[-1]
        self._kinds = self._formats + 8 * n

    def _format(self, position):
        return _fmt8.unpack_from(self.shm.buf, self._formats + 8 * position)[0] \
            .rstrip(b'\x00').decode(_ENCODING)

    def _get_packing_format(self, position):
        "The struct format of the item at position, as stored now."
        n = self._list_len
        if position < 0:
            position += n
        if not 0 <= position < n:
            raise IndexError("Requested position out of range.")
        return self._format(position)

    # Item access is C (_ShareableListBase); it comes here for what it
    # does not decode itself, with position already in range.

    def _slow_getitem(self, position):
        buf = self.shm.buf
        (raw,) = _struct(self._format(position)).unpack_from(
            buf, self._data + self._allocated_offsets[position])
        return _decode(struct.unpack_from("b", buf, self._kinds + position)[0], raw)

    def _slow_setitem(self, position, value):
        offset = self._allocated_offsets[position]
        if isinstance(value, (str, bytes)):
            room = self._allocated_offsets[position + 1] - offset
            encoded = value.encode(_ENCODING) if isinstance(value, str) else value
            if len(encoded) > room:
                raise ValueError("bytes/str item exceeds available storage")
            current = self._format(position)
            fmt = current if current[-1] == "s" else "%ds" % room
        else:
            fmt = _FORMAT_OF[type(value)]
            encoded = value
        buf = self.shm.buf
        _fmt8.pack_into(buf, self._formats + 8 * position, fmt.encode(_ENCODING))
        buf[self._kinds + position] = _kind(value)
        _struct(fmt).pack_into(buf, self._data + offset, encoded)

    def _slow_len(self):
        return _q.unpack_from(self.shm.buf, 0)[0]

    def __reduce__(self):
        return partial(self.__class__, name=self.shm.name), ()

    def __repr__(self):
        return f'{self.__class__.__name__}({list(self)}, name={self.shm.name!r})'

    @property
    def format(self):
        "The struct format of all the items, as stored now."
        return "".join(self._format(i) for i in range(self._list_len))

    def count(self, value):
        "L.count(value) -> integer -- return number of occurrences of value."
        return sum(value == entry for entry in self)

    def index(self, value):
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        raise ValueError(f"{value!r} not in this container")

    __class_getitem__ = classmethod(types.GenericAlias)
