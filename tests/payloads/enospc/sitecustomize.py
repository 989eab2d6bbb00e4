"""A full disk where the machine will not mount a small one (not root): imported by every Python process
of a test whose PYTHONPATH starts here, it makes os.write and os.fsync fail with ENOSPC for files under
$PGOLF_TEST_FULL_DIR while the file $PGOLF_TEST_FULL_FLAG exists. pgolf's run-directory writes all end in
one of the two (logs: os.write; ledger, results, artifacts: atomic writes, fsync), so the driver meets the
refusal where a real full disk would refuse it."""
import errno
import os

_DIR, _FLAG = os.environ.get("PGOLF_TEST_FULL_DIR"), os.environ.get("PGOLF_TEST_FULL_FLAG")

if _DIR and _FLAG:
    _write, _fsync = os.write, os.fsync

    def _full(fd) -> bool:
        if not os.path.exists(_FLAG):
            return False
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(_DIR)
        except OSError:
            return False

    def write(fd, data):
        if _full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _write(fd, data)

    def fsync(fd):
        if _full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _fsync(fd)

    os.write, os.fsync = write, fsync
