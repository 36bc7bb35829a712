/* The packet recorder in C: its per-packet step (services/capture/recorder.py, pcap_pack_py is its twin) and its
 * writer thread (Writer, below; recorder.py's Python writer thread is its twin).
 *
 * pcap_pack(recs, start, room, until_ts, max_rec[, cut_at, dlt]) -> (data, stop, too_big, last_ts, packets)
 *   recs: a list of (float ts, bytes frame).  From recs[start], pcap records (16-byte little-endian
 *   header, microseconds, then the frame) are concatenated into data, stopping before the first
 *   record that would pass `room` bytes or whose ts >= until_ts; records longer than max_rec are
 *   skipped (counted in too_big).  stop is the index of the first record not consumed.  A frame of
 *   cut_at bytes or more (0: none) gets wire_len's original length.
 *
 * pcap_heads(...same) -> (heads, frames, nbytes, stop, too_big, last_ts, packets)
 *   The same records, their 16-byte headers concatenated in heads and their frames (the same objects) in a
 *   list, nbytes the records' size: for Writer.write_records, which interleaves them on its own thread.
 *
 * wire_len(frame, dlt, cut_at) -> int: the twin of services/capture/evidence.py's wire_len.
 */
#define _GNU_SOURCE     /* O_DIRECT */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static int is_vlan(unsigned et) { return et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200; }

/* evidence.wire_len: the link header plus the outermost IP header's length when that is more than the
 * frame holds and the frame is at least cut_at bytes long; else the frame's length */
static Py_ssize_t wire_len_c(const unsigned char *p, Py_ssize_t n, int dlt, Py_ssize_t cut_at) {
    if (cut_at <= 0 || n < cut_at)
        return n;
    Py_ssize_t off;
    long et = -1;
    if (dlt == 1) {
        if (n < 14)
            return n;
        off = 12;
        et = (p[12] << 8) | p[13];
        for (int tags = 0; is_vlan((unsigned)et) && tags < 4 && off + 6 <= n; tags++) {
            off += 4;
            et = (p[off] << 8) | p[off + 1];
        }
        off += 2;
    } else if (dlt == 12 || dlt == 14 || dlt == 101 || dlt == 228 || dlt == 229) {
        off = 0;
    } else if (dlt == 113) {
        off = 16;
        et = n >= 16 ? (p[14] << 8) | p[15] : -1;
    } else if (dlt == 276) {
        off = 20;
        et = n >= 20 ? (p[0] << 8) | p[1] : -1;
    } else if (dlt == 0 || dlt == 108) {
        off = 4;
    } else {
        return n;
    }
    if ((et != -1 && et != 0x0800 && et != 0x86DD) || off + 20 > n)
        return n;
    int v = p[off] >> 4;
    Py_ssize_t end = 0;
    if (v == 4 && et != 0x86DD) {
        Py_ssize_t ihl = (p[off] & 0xF) * 4, tot = (p[off + 2] << 8) | p[off + 3];
        if (ihl >= 20 && tot >= ihl)
            end = off + tot;
    } else if (v == 6 && et != 0x0800 && off + 40 <= n) {
        Py_ssize_t pl = (p[off + 4] << 8) | p[off + 5];
        if (pl)
            end = off + 40 + pl;
    }
    return end > n ? end : n;
}

static PyObject *wire_len(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *frame;
    int dlt;
    Py_ssize_t cut_at;
    if (!PyArg_ParseTuple(args, "O!in", &PyBytes_Type, &frame, &dlt, &cut_at))
        return NULL;
    return PyLong_FromSsize_t(wire_len_c((const unsigned char *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame),
                                         dlt, cut_at));
}

/* pcap_pack, and with split pcap_heads: the records' headers in one bytes object and their frames in a list
 * (not copied: the compiled writer copies them on its own thread) */
static PyObject *pack_impl(PyObject *args, int split) {
    PyObject *recs;
    Py_ssize_t start, room, max_rec, cut_at = 0;
    int dlt = 1;
    double until;
    if (!PyArg_ParseTuple(args, "O!nndn|ni", &PyList_Type, &recs, &start, &room, &until, &max_rec, &cut_at, &dlt))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(recs), i, total = 0, stop = n, too_big = 0, packets = 0, kept = 0;
    double last = 0.0;
    if (start < 0)
        start = 0;
    /* pass 1: where to stop and how many bytes */
    for (i = start; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(recs, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "records must be (float, bytes) tuples");
            return NULL;
        }
        double ts = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 0));
        if (ts == -1.0 && PyErr_Occurred())
            return NULL;
        Py_ssize_t rlen = 16 + PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
        if (rlen > max_rec)
            continue;
        if (ts >= until || total + rlen > room) {
            stop = i;
            break;
        }
        total += rlen;
        kept++;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, split ? 16 * kept : total), *frames = NULL;
    if (data == NULL)
        return NULL;
    if (split && (frames = PyList_New(kept)) == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(data);
    /* pass 2: fill */
    for (i = start; i < stop; i++) {
        PyObject *t = PyList_GET_ITEM(recs, i);
        PyObject *fr = PyTuple_GET_ITEM(t, 1);
        Py_ssize_t len = PyBytes_GET_SIZE(fr);
        if (16 + len > max_rec) {
            too_big++;
            continue;
        }
        double ts = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 0));
        long long us = (long long)floor(ts * 1000000.0 + 0.5);
        put32(o, (uint32_t)(us / 1000000));
        put32(o + 4, (uint32_t)(us % 1000000));
        put32(o + 8, (uint32_t)len);
        put32(o + 12, (uint32_t)wire_len_c((const unsigned char *)PyBytes_AS_STRING(fr), len, dlt, cut_at));
        if (split) {
            Py_INCREF(fr);
            PyList_SET_ITEM(frames, packets, fr);
            o += 16;
        } else {
            memcpy(o + 16, PyBytes_AS_STRING(fr), (size_t)len);
            o += 16 + len;
        }
        last = ts;
        packets++;
    }
    if (split)
        return Py_BuildValue("(NNnnndN)", data, frames, total, stop, too_big, last, PyLong_FromSsize_t(packets));
    return Py_BuildValue("(NnndN)", data, stop, too_big, last, PyLong_FromSsize_t(packets));
}

static PyObject *pcap_pack(PyObject *self, PyObject *args) {
    (void)self;
    return pack_impl(args, 0);
}

static PyObject *pcap_heads(PyObject *self, PyObject *args) {
    (void)self;
    return pack_impl(args, 1);
}

/* ---- Writer: the recorder's file operations on a thread of its own that never takes the interpreter's lock.
 *
 * recorder.py's writer thread (the pure-Python twin, _ThreadIO) took the lock back after every system call,
 * and capture's loop, which holds it through each batch, then waited for it: file operations were cheap in
 * CPU but slow in time, and capture waited for the queue.  Here the operations are queued as plain data
 * (paths copied, packet bytes held by a reference the caller's thread drops once done) and done in order:
 *
 *   open(path, header) -> seq        a new file (0640), O_DIRECT where asked and taken, its header written
 *   write(pieces) -> seq             bytes (or a list of them) appended to it (blocks while queue_bytes are queued)
 *   write_records(heads, frames)     pcap_heads' records: each 16-byte header, then its frame
 *   sync() -> seq                    what it holds so far readable in it (the direct buffer's partial block)
 *   close_file() -> seq              the file finished and closed
 *   index(path, tmp, data) -> seq    data written to tmp (0640) and renamed to path
 *   unlink(path) -> seq              path removed (a missing one is no error)
 *   fence() -> seq                   nothing: wait(seq) then means everything queued before it is done
 *   wait(seq, timeout) -> bool       blocks (without the interpreter's lock) until seq is done
 *   hold() / release()               the thread stopped between two operations (tests read the store then)
 *   stats() -> (errors, files_direct, last_error, completed)
 *   shutdown()                       every queued operation done, the thread joined
 *
 * Direct writes are whole 4 KB blocks from a page-aligned buffer at block offsets, once it holds flush_bytes;
 * the partial last block stays in the buffer and is written through the ordinary descriptor by sync and
 * close_file (the next direct write covers that block again).  A direct write the filesystem refuses (or
 * writes short) sends the rest of that file through the page cache.  Rule for the two locks: nobody takes the
 * interpreter's lock while holding the writer's mutex. */
#include <pthread.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

enum { OP_OPEN = 1, OP_WRITE, OP_SYNC, OP_CLOSE, OP_INDEX, OP_UNLINK, OP_FENCE, OP_HOLD, OP_RECS };
#define WBLOCK 4096

typedef struct Op {
    struct Op *next;
    int kind;
    char *path, *path2;
    PyObject *data;              /* a bytes object or a list of them (held until the caller's thread frees the op) */
    PyObject *heads;             /* OP_RECS: the records' 16-byte headers, interleaved with the pieces */
    const char **ptrs;
    Py_ssize_t *lens, npieces, nbytes;
    unsigned long long seq;
} Op;

typedef struct {
    PyObject_HEAD
    pthread_t th;
    int started, stopping;
    pid_t pid;                           /* the process that started the thread (a forked child has none) */
    unsigned long long held, released;   /* the hold op the thread stopped at, and the last one released */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_room, cv_done;
    Op *head, *tail, *done;
    unsigned long long submitted, completed;
    Py_ssize_t qbytes, max_qbytes;
    long long errors, files_direct;
    char last_error[320];
    /* the writer thread's own: the file being written */
    int want_direct, fd, dfd;
    unsigned char *buf;
    size_t cap, n, flush;
    off_t off;
} Writer;

static void op_free_c(Op *op) {   /* the C parts (any thread) */
    free(op->path);
    free(op->path2);
    free((void *)op->ptrs);
    free(op->lens);
    op->path = op->path2 = NULL;
    op->ptrs = NULL;
    op->lens = NULL;
}

static void op_free(Op *op) {     /* the whole op: under the GIL (it drops the packet bytes) */
    op_free_c(op);
    Py_XDECREF(op->data);
    Py_XDECREF(op->heads);
    PyMem_RawFree(op);
}

/* all n bytes at offset off (off < 0: at the descriptor's position); 0 or an errno */
static int write_all(int fd, const unsigned char *p, size_t n, off_t off) {
    while (n) {
        ssize_t w = off < 0 ? write(fd, p, n) : pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        p += w;
        n -= (size_t)w;
        if (off >= 0)
            off += w;
    }
    return 0;
}

/* a new file, mode 0640 whatever the umask; the descriptor, or -1 with *err set */
static int create_0640(const char *path, int *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        *err = errno;
    else if (fchmod(fd, 0640) < 0)
        *err = errno;
    return fd;
}

/* the rest of this file through the page cache (the buffer's bytes at their offset) */
static int w_fallback(Writer *w) {
    int e = write_all(w->fd, w->buf, w->n, w->off);
    if (!e && lseek(w->fd, w->off + (off_t)w->n, SEEK_SET) < 0)
        e = errno;
    close(w->dfd);
    w->dfd = -1;
    w->n = 0;
    return e;
}

static int w_flush_blocks(Writer *w) {
    size_t whole = w->n & ~(size_t)(WBLOCK - 1);
    if (w->dfd < 0 || !whole)
        return 0;
    ssize_t r;
    do
        r = pwrite(w->dfd, w->buf, whole, w->off);
    while (r < 0 && errno == EINTR);
    if (r != (ssize_t)whole)
        return w_fallback(w);
    memmove(w->buf, w->buf + whole, w->n - whole);
    w->off += (off_t)whole;
    w->n -= whole;
    return 0;
}

static int w_append(Writer *w, const unsigned char *p, size_t len) {
    if (w->fd < 0)
        return EBADF;
    while (len) {
        if (w->dfd < 0)
            return write_all(w->fd, p, len, -1);
        size_t k = w->cap - w->n < len ? w->cap - w->n : len;
        memcpy(w->buf + w->n, p, k);
        w->n += k;
        p += k;
        len -= k;
        if (w->n >= w->flush) {
            int e = w_flush_blocks(w);
            if (e)
                return e;
        }
    }
    return 0;
}

static int w_sync(Writer *w) {
    if (w->fd < 0 || w->dfd < 0)
        return 0;
    int e = w_flush_blocks(w);
    if (!e && w->dfd >= 0 && w->n)
        e = write_all(w->fd, w->buf, w->n, w->off);
    return e;
}

static int w_close(Writer *w) {
    if (w->fd < 0)
        return 0;
    int e = w_sync(w);
    if (w->dfd >= 0)
        close(w->dfd);
    if (close(w->fd) < 0 && !e)
        e = errno;
    w->fd = w->dfd = -1;
    w->n = 0;
    w->off = 0;
    return e;
}

/* the op's pieces appended to the file being written */
static int w_pieces(Writer *w, Op *op) {
    int e = 0;
    for (Py_ssize_t i = 0; i < op->npieces && !e; i++)
        e = w_append(w, (const unsigned char *)op->ptrs[i], (size_t)op->lens[i]);
    return e;
}

/* one operation, on the writer thread, without any lock; returns 0 or an errno */
static int w_do(Writer *w, Op *op, int *direct_opened) {
    int e = 0;
    switch (op->kind) {
    case OP_OPEN: {
        int ce = w_close(w);      /* a file still open (the recorder closes each first); its error is reported */
        w->fd = create_0640(op->path, &e);
        if (w->fd < 0)
            return e;
#ifdef O_DIRECT
        if (w->want_direct && w->buf != NULL) {
            w->dfd = open(op->path, O_WRONLY | O_DIRECT | O_CLOEXEC);
            if (w->dfd >= 0)
                *direct_opened = 1;
        }
#endif
        e = e ? e : w_pieces(w, op);     /* the header */
        return e ? e : ce;
    }
    case OP_WRITE:
        return w_pieces(w, op);
    case OP_RECS: {
        const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(op->heads);
        for (Py_ssize_t i = 0; i < op->npieces && !e; i++) {
            e = w_append(w, h + 16 * i, 16);
            if (!e)
                e = w_append(w, (const unsigned char *)op->ptrs[i], (size_t)op->lens[i]);
        }
        return e;
    }
    case OP_SYNC:
        return w_sync(w);
    case OP_CLOSE:
        return w_close(w);
    case OP_INDEX: {
        int fd = create_0640(op->path2, &e);
        if (fd < 0)
            return e;
        for (Py_ssize_t i = 0; i < op->npieces && !e; i++)
            e = write_all(fd, (const unsigned char *)op->ptrs[i], (size_t)op->lens[i], -1);
        if (close(fd) < 0 && !e)
            e = errno;
        if (!e && rename(op->path2, op->path) < 0)
            e = errno;
        return e;
    }
    case OP_UNLINK:
        return unlink(op->path) < 0 && errno != ENOENT ? errno : 0;
    default:
        return 0;
    }
}

static const char *op_name(int kind) {
    static const char *names[] = {"?", "open", "write", "sync", "close", "index", "unlink", "fence", "hold", "write"};
    return kind >= 0 && kind <= OP_RECS ? names[kind] : "?";
}

static void *w_main(void *arg) {
    Writer *w = (Writer *)arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->cv_work, &w->mu);
        if (w->head == NULL)
            break;
        Op *op = w->head;
        w->head = op->next;
        if (w->head == NULL)
            w->tail = NULL;
        int e = 0, direct_opened = 0;
        if (op->kind == OP_HOLD) {
            w->held = op->seq;
            pthread_cond_broadcast(&w->cv_done);
            while (w->released < op->seq && !w->stopping)
                pthread_cond_wait(&w->cv_work, &w->mu);
        } else {
            pthread_mutex_unlock(&w->mu);
            e = w_do(w, op, &direct_opened);
            pthread_mutex_lock(&w->mu);
        }
        if (e) {
            w->errors++;
            snprintf(w->last_error, sizeof w->last_error, "%s %s: %s", op_name(op->kind), op->path ? op->path : "",
                     strerror(e));
        }
        w->files_direct += direct_opened;
        w->qbytes -= op->nbytes;
        w->completed = op->seq;
        op_free_c(op);
        op->next = w->done;
        w->done = op;
        pthread_cond_broadcast(&w->cv_room);
        pthread_cond_broadcast(&w->cv_done);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* the operations the thread has done: their packet bytes released (the caller's thread, under the GIL) */
static void w_free_done(Writer *w) {
    if (w->pid != getpid())       /* a forked child: the mutex may have been copied held; leave it all */
        return;
    pthread_mutex_lock(&w->mu);
    Op *d = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    while (d != NULL) {
        Op *next = d->next;
        op_free(d);
        d = next;
    }
}

static char *dup_path(PyObject *o) {
    PyObject *b = NULL;
    if (!PyUnicode_FSConverter(o, &b))
        return NULL;
    char *s = strdup(PyBytes_AS_STRING(b));
    Py_DECREF(b);
    if (s == NULL)
        PyErr_NoMemory();
    return s;
}

/* data (bytes, or a list of bytes) as the op's pieces; the op holds a reference */
static int op_pieces(Op *op, PyObject *data) {
    if (data == NULL || data == Py_None)
        return 0;
    if (PyBytes_Check(data)) {
        op->npieces = 1;
    } else if (PyList_Check(data)) {
        op->npieces = PyList_GET_SIZE(data);
        for (Py_ssize_t i = 0; i < op->npieces; i++)
            if (!PyBytes_Check(PyList_GET_ITEM(data, i))) {
                PyErr_SetString(PyExc_TypeError, "the data must be bytes or a list of bytes");
                return -1;
            }
    } else {
        PyErr_SetString(PyExc_TypeError, "the data must be bytes or a list of bytes");
        return -1;
    }
    op->ptrs = malloc(sizeof(char *) * (size_t)(op->npieces ? op->npieces : 1));
    op->lens = malloc(sizeof(Py_ssize_t) * (size_t)(op->npieces ? op->npieces : 1));
    if (op->ptrs == NULL || op->lens == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < op->npieces; i++) {
        PyObject *b = PyBytes_Check(data) ? data : PyList_GET_ITEM(data, i);
        op->ptrs[i] = PyBytes_AS_STRING(b);
        op->lens[i] = PyBytes_GET_SIZE(b);
        op->nbytes += op->lens[i];
    }
    /* a list is copied: the caller may change its own afterwards */
    op->data = PyBytes_Check(data) ? (Py_INCREF(data), data) : PyList_GetSlice(data, 0, op->npieces);
    return op->data == NULL ? -1 : 0;
}

static PyObject *w_submit(Writer *w, int kind, PyObject *path, PyObject *path2, PyObject *data, PyObject *heads) {
    if (!w->started || w->stopping || w->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, w->pid != getpid() ? "the recorder's writer belongs to the process that "
                        "started it (this one was forked since)" : "the recorder's writer is shut down");
        return NULL;
    }
    w_free_done(w);
    Op *op = PyMem_RawCalloc(1, sizeof(Op));
    if (op == NULL)
        return PyErr_NoMemory();
    op->kind = kind;
    if ((path != NULL && (op->path = dup_path(path)) == NULL) || (path2 != NULL && (op->path2 = dup_path(path2)) == NULL)
        || op_pieces(op, data) < 0) {
        op_free(op);
        return NULL;
    }
    if (heads != NULL) {
        if (PyBytes_GET_SIZE(heads) != 16 * op->npieces) {
            PyErr_SetString(PyExc_ValueError, "write_records(): 16 header bytes per frame");
            op_free(op);
            return NULL;
        }
        Py_INCREF(heads);
        op->heads = heads;
        op->nbytes += PyBytes_GET_SIZE(heads);
    }
    if (kind != OP_WRITE && kind != OP_RECS)
        op->nbytes = 0;       /* only packets count in the queue's bound */
    unsigned long long seq;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->mu);
    while (op->nbytes && w->qbytes && w->qbytes + op->nbytes > w->max_qbytes)
        pthread_cond_wait(&w->cv_room, &w->mu);
    op->seq = seq = ++w->submitted;
    w->qbytes += op->nbytes;
    if (w->tail != NULL)
        w->tail->next = op;
    else
        w->head = op;
    w->tail = op;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *W_open(Writer *w, PyObject *args) {
    PyObject *path, *header;
    if (!PyArg_ParseTuple(args, "OO!", &path, &PyBytes_Type, &header))
        return NULL;
    return w_submit(w, OP_OPEN, path, NULL, header, NULL);
}

static PyObject *W_write(Writer *w, PyObject *data) { return w_submit(w, OP_WRITE, NULL, NULL, data, NULL); }
static PyObject *W_sync(Writer *w, PyObject *u) { (void)u; return w_submit(w, OP_SYNC, NULL, NULL, NULL, NULL); }
static PyObject *W_close_file(Writer *w, PyObject *u) { (void)u; return w_submit(w, OP_CLOSE, NULL, NULL, NULL, NULL); }
static PyObject *W_fence(Writer *w, PyObject *u) { (void)u; return w_submit(w, OP_FENCE, NULL, NULL, NULL, NULL); }
static PyObject *W_unlink(Writer *w, PyObject *path) { return w_submit(w, OP_UNLINK, path, NULL, NULL, NULL); }

static PyObject *W_write_records(Writer *w, PyObject *args) {
    PyObject *heads, *frames;
    if (!PyArg_ParseTuple(args, "O!O!", &PyBytes_Type, &heads, &PyList_Type, &frames))
        return NULL;
    return w_submit(w, OP_RECS, NULL, NULL, frames, heads);
}

static PyObject *W_index(Writer *w, PyObject *args) {
    PyObject *path, *tmp, *data;
    if (!PyArg_ParseTuple(args, "OOO!", &path, &tmp, &PyBytes_Type, &data))
        return NULL;
    return w_submit(w, OP_INDEX, path, tmp, data, NULL);
}

static PyObject *W_wait(Writer *w, PyObject *args) {
    unsigned long long seq;
    double timeout = -1.0;
    if (!PyArg_ParseTuple(args, "K|d", &seq, &timeout))
        return NULL;
    if (w->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "the recorder's writer belongs to the process that started it");
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout >= 0) {
        until.tv_sec += (time_t)timeout;
        until.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&w->mu);
    while (w->completed < seq && w->started) {
        if (timeout < 0)
            pthread_cond_wait(&w->cv_done, &w->mu);
        else if (pthread_cond_timedwait(&w->cv_done, &w->mu, &until) == ETIMEDOUT)
            break;
    }
    ok = w->completed >= seq;
    pthread_mutex_unlock(&w->mu);
    Py_END_ALLOW_THREADS
    w_free_done(w);
    return PyBool_FromLong(ok);
}

static PyObject *W_hold(Writer *w, PyObject *u) {
    (void)u;
    PyObject *r = w_submit(w, OP_HOLD, NULL, NULL, NULL, NULL);
    if (r == NULL)
        return NULL;
    unsigned long long seq = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->mu);
    while (w->held != seq)
        pthread_cond_wait(&w->cv_done, &w->mu);
    pthread_mutex_unlock(&w->mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *W_release(Writer *w, PyObject *u) {
    (void)u;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->mu);
    w->released = w->held;      /* the hold the thread stopped at (hold() returned only once it had) */
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *W_stats(Writer *w, PyObject *u) {
    (void)u;
    long long errors, direct;
    unsigned long long done;
    char last[sizeof w->last_error];
    if (w->pid != getpid())
        return Py_BuildValue("(LLsK)", 0LL, 0LL, "", 0ULL);
    pthread_mutex_lock(&w->mu);
    errors = w->errors;
    direct = w->files_direct;
    done = w->completed;
    memcpy(last, w->last_error, sizeof last);
    pthread_mutex_unlock(&w->mu);
    return Py_BuildValue("(LLsK)", errors, direct, last, done);
}

static void w_stop(Writer *w) {
    if (!w->started)
        return;
    if (w->pid != getpid()) {     /* a forked child: no thread to join, the file is its parent's */
        w->started = 0;
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    Py_END_ALLOW_THREADS
    w->started = 0;
    w_close(w);        /* a file still open (no close_file queued) */
    w_free_done(w);
}

static PyObject *W_shutdown(Writer *w, PyObject *u) {
    (void)u;
    w_stop(w);
    Py_RETURN_NONE;
}

static int W_init(Writer *w, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"direct", "buf_bytes", "flush_bytes", "queue_bytes", NULL};
    int direct = 1;
    Py_ssize_t cap = 8 << 20, flush = 4 << 20, qb = 64 << 20;
    if (w->started) {
        PyErr_SetString(PyExc_RuntimeError, "the writer is running already");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pnnn", kwl, &direct, &cap, &flush, &qb))
        return -1;
    if (cap < 2 * WBLOCK || cap % WBLOCK || flush < WBLOCK || flush > cap - WBLOCK || qb < 1) {
        PyErr_SetString(PyExc_ValueError, "buf_bytes: a multiple of 4096; flush_bytes: 4096 to buf_bytes - 4096");
        return -1;
    }
    w->fd = w->dfd = -1;
    w->want_direct = direct;
    w->cap = (size_t)cap;
    w->flush = (size_t)flush;
    w->max_qbytes = qb;
    if (direct) {
        void *b = NULL;
        if (posix_memalign(&b, WBLOCK, (size_t)cap) == 0)
            w->buf = b;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv_work, NULL);
    pthread_cond_init(&w->cv_room, NULL);
    pthread_cond_init(&w->cv_done, NULL);
    w->started = 1;
    w->pid = getpid();
    if (pthread_create(&w->th, NULL, w_main, w) != 0) {
        w->started = 0;
        PyErr_SetString(PyExc_OSError, "could not start the recorder's writer thread");
        return -1;
    }
    return 0;
}

static void W_dealloc(Writer *w) {
    w_stop(w);
    Op *q = w->pid == getpid() ? w->head : NULL;   /* none is left once the thread has run them all */
    while (q != NULL) {
        Op *next = q->next;
        op_free(q);
        q = next;
    }
    free(w->buf);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef W_methods[] = {
    {"open", (PyCFunction)W_open, METH_VARARGS, "open(path, header) -> seq"},
    {"write", (PyCFunction)W_write, METH_O, "write(bytes or list of bytes) -> seq"},
    {"write_records", (PyCFunction)W_write_records, METH_VARARGS, "write_records(heads, frames) -> seq (pcap_heads)"},
    {"sync", (PyCFunction)W_sync, METH_NOARGS, "sync() -> seq"},
    {"close_file", (PyCFunction)W_close_file, METH_NOARGS, "close_file() -> seq"},
    {"index", (PyCFunction)W_index, METH_VARARGS, "index(path, tmp, data) -> seq"},
    {"unlink", (PyCFunction)W_unlink, METH_O, "unlink(path) -> seq"},
    {"fence", (PyCFunction)W_fence, METH_NOARGS, "fence() -> seq"},
    {"wait", (PyCFunction)W_wait, METH_VARARGS, "wait(seq[, timeout]) -> bool"},
    {"hold", (PyCFunction)W_hold, METH_NOARGS, "hold(): the thread stopped between two operations"},
    {"release", (PyCFunction)W_release, METH_NOARGS, "release(): the thread goes on"},
    {"stats", (PyCFunction)W_stats, METH_NOARGS, "stats() -> (errors, files_direct, last_error, completed)"},
    {"shutdown", (PyCFunction)W_shutdown, METH_NOARGS, "shutdown(): every queued operation done, the thread joined"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.capture._recfast.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The packet recorder's file operations on a thread that never takes the interpreter's lock.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)W_init,
    .tp_dealloc = (destructor)W_dealloc,
    .tp_methods = W_methods,
};

static PyMethodDef methods[] = {
    {"pcap_pack", pcap_pack, METH_VARARGS, "Concatenate (ts, frame) records as pcap records (see the module source)."},
    {"pcap_heads", pcap_heads, METH_VARARGS, "pcap_pack's headers in one bytes object, the frames in a list."},
    {"wire_len", wire_len, METH_VARARGS, "A frame's original length for a pcap record (evidence.wire_len's twin)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_recfast", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__recfast(void) {
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
