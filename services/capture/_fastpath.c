/*
 * FlowTarget capture: the two per-packet steps that cost most in Python,
 * compiled.  Optional: when this module is not built, services.capture.fastpath
 * uses its pure-Python twins, which a test keeps equal to these functions.
 *
 *   eth4(frame)  -> None | (key, proto, ip_len, payload_off, payload_len,
 *                           tcp_flags, seq, ack, sport, dport)
 *       The meter's fast path: untagged Ethernet II, IPv4 without options,
 *       not a fragment, TCP with a sane data offset or UDP not on a tunnel
 *       port.  key is bytes((proto,)) + frame[26:38]: the meter's
 *       directional flow key (protocol, addresses and ports), 13 bytes.
 *       Anything else: None (the general decoder takes it).
 *
 *   pcap_records(buf, pos, big_endian, ts_unit, limit, max_record[, snaplen]) -> (records, pos, bad, cut)
 *   (cut: the shortest captured length among the records read that are shorter than their packet, 0: none)
 *                -> (records, new_pos, bad_caplen)
 *       Up to ``limit`` whole pcap records from ``buf`` at ``pos`` as a list
 *       of (timestamp, frame).  Stops at the first record that is not wholly
 *       in ``buf`` (the caller reads more) or whose caplen exceeds
 *       ``max_record`` (returned as bad_caplen; otherwise -1), or, with -2,
 *       at a record whose caplen exceeds its original length or a non-zero
 *       ``snaplen`` (the caller counts and reads that one itself).
 *
 *       With ``shard, shards, dlt`` (shards > 1), records of other shards
 *       are skipped (``shard_hash``): new_pos passes them, the list holds
 *       only this shard's records.
 *
 *       With ``raw`` (an 11th argument, true), records is instead an index of the records in ``buf``: per
 *       record a native double (its time) and two native int64 (its frame's offset in buf and length),
 *       RAW_ENTRY bytes, for the meter's loop to read where they are (fastpath.RawBatch); no object per record.
 *
 *   raw_records(buf, index) -> [(timestamp, frame), ...]: such an index's records as objects.
 *
 *   shard_hash(frame, dlt) -> int | -1
 *       A symmetric hash of a frame's IP addresses (outer header; both
 *       directions, every fragment and every flow tunnelled between two hosts
 *       hash alike), -1 for frames without IPv4/IPv6 (shard 0 takes those).
 *       A file replayed by N shard processes: shard k keeps the frames with
 *       shard_hash % N == k.
 *
 *   Collector()  a callback for pypcap's dispatch(): collector(ts, frame, ...)
 *       appends (ts, bytes(frame)); collector.take() returns the list so far.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t be16(const unsigned char *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t le32(const unsigned char *p) {
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static int is_tunnel_port(uint32_t p) { return p == 4789 || p == 2152 || p == 37008 || p == 5247; }

static PyObject *eth4(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "eth4() needs bytes");
        return NULL;
    }
    const unsigned char *f = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n < 42 || f[14] != 0x45 || f[12] != 8 || f[13] != 0)
        Py_RETURN_NONE;
    long nbytes = (long)be16(f + 16);
    uint32_t fragw = be16(f + 20);
    if ((fragw & 0x3FFF) || nbytes < 20)
        Py_RETURN_NONE;
    long end = 14 + nbytes;
    if (end > n)
        end = (long)n;
    int proto = f[23];
    long po, pl;
    uint32_t sp = be16(f + 34), dp = be16(f + 36), flags = 0, seq = 0, ack = 0;
    if (proto == 6) {
        if (end < 54)
            Py_RETURN_NONE;
        seq = be32(f + 38);
        ack = be32(f + 42);
        po = 34 + ((f[46] >> 4) << 2);
        flags = f[47];
        if (po < 54 || po > end)
            Py_RETURN_NONE;
        pl = end - po;
    } else if (proto == 17) {
        if (is_tunnel_port(sp) || is_tunnel_port(dp))
            Py_RETURN_NONE;
        po = 42;
        pl = end - 42;
    } else {
        Py_RETURN_NONE;
    }
    PyObject *t = PyTuple_New(10);
    if (t == NULL)
        return NULL;
    PyObject *key = PyBytes_FromStringAndSize(NULL, 13);
    if (key != NULL) {
        char *k = PyBytes_AS_STRING(key);
        k[0] = (char)proto;
        memcpy(k + 1, f + 26, 12);
    }
    PyObject *items[10] = {
        key, PyLong_FromLong(proto), PyLong_FromLong(nbytes),
        PyLong_FromLong(po), PyLong_FromLong(pl), PyLong_FromLong((long)flags),
        PyLong_FromUnsignedLong(seq), PyLong_FromUnsignedLong(ack), PyLong_FromLong((long)sp),
        PyLong_FromLong((long)dp),
    };
    for (int i = 0; i < 10; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 10; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(t);
            return NULL;
        }
    }
    for (int i = 0; i < 10; i++)
        PyTuple_SET_ITEM(t, i, items[i]);
    return t;
}

/* ---- sharding a file's replay by a symmetric hash of the IP addresses (shard_hash) */
static inline uint64_t fmix64(uint64_t v) {
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdULL;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ULL;
    v ^= v >> 33;
    return v;
}

static inline uint64_t be64(const unsigned char *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* the IP header's offset in a frame of link type dlt, its version (4, 6) in *ver; no IP header: *ver stays 0 */
static Py_ssize_t ip_offset(const unsigned char *f, Py_ssize_t n, int dlt, int *ver) {
    Py_ssize_t off;
    uint32_t et;
    switch (dlt) {
    case 1:   /* Ethernet: 802.1Q/802.1ad tags, PPPoE session, MPLS */
        if (n < 14)
            return 0;
        et = be16(f + 12);
        off = 14;
        while ((et == 0x8100 || et == 0x88a8 || et == 0x9100) && n >= off + 4) {
            et = be16(f + off + 2);
            off += 4;
        }
        if (et == 0x8864) {   /* PPPoE session: 6 bytes, then the PPP protocol */
            if (n < off + 8)
                return 0;
            uint32_t ppp = be16(f + off + 6);
            off += 8;
            et = ppp == 0x0021 ? 0x0800 : ppp == 0x0057 ? 0x86dd : 0;
        } else if (et == 0x8847 || et == 0x8848) {   /* MPLS: labels up to the bottom of the stack */
            while (n >= off + 4) {
                int bottom = f[off + 2] & 1;
                off += 4;
                if (bottom)
                    break;
            }
            et = 0;
            if (n > off)
                et = (f[off] >> 4) == 4 ? 0x0800 : (f[off] >> 4) == 6 ? 0x86dd : 0;
        }
        if (et == 0x0800)
            *ver = 4;
        else if (et == 0x86dd)
            *ver = 6;
        else
            return 0;
        return off;
    case 113:   /* Linux cooked */
        if (n < 16)
            return 0;
        et = be16(f + 14);
        off = 16;
        break;
    case 276:   /* Linux cooked v2 */
        if (n < 20)
            return 0;
        et = be16(f);
        off = 20;
        break;
    case 0:
    case 108:   /* BSD loopback: a 4-byte family, then the IP header */
        off = 4;
        et = 0;
        break;
    case 12:
    case 14:
    case 101:   /* raw IP */
        off = 0;
        et = 0;
        break;
    case 228:
        et = 0x0800;
        off = 0;
        break;
    case 229:
        et = 0x86dd;
        off = 0;
        break;
    default:
        return -1;
    }
    if (et == 0 && n > off)
        et = (f[off] >> 4) == 4 ? 0x0800 : (f[off] >> 4) == 6 ? 0x86dd : 0;
    if (et == 0x0800)
        *ver = 4;
    else if (et == 0x86dd)
        *ver = 6;
    else
        return -1;
    return off;
}

/* -1: no IP header (shard 0); else a 63-bit symmetric hash of the two addresses */
static long long shard_hash_of(const unsigned char *f, Py_ssize_t n, int dlt) {
    int ver = 0;
    Py_ssize_t off = ip_offset(f, n, dlt, &ver);
    if (off < 0 || ver == 0)
        return -1;
    uint64_t a, b;
    if (ver == 4) {
        if (n < off + 20)
            return -1;
        a = fmix64(be32(f + off + 12));
        b = fmix64(be32(f + off + 16));
    } else {
        if (n < off + 40)
            return -1;
        a = fmix64(be64(f + off + 8) ^ fmix64(be64(f + off + 16)));
        b = fmix64(be64(f + off + 24) ^ fmix64(be64(f + off + 32)));
    }
    return (long long)(fmix64(a + b) >> 1);
}

static inline int in_shard(const unsigned char *f, Py_ssize_t n, int dlt, long long shard, long long shards) {
    long long h = shard_hash_of(f, n, dlt);
    return (h < 0 ? 0 : h % shards) == shard;
}

static PyObject *shard_hash(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    int dlt;
    if (!PyArg_ParseTuple(args, "y*i", &view, &dlt))
        return NULL;
    long long h = shard_hash_of((const unsigned char *)view.buf, view.len, dlt);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(h);
}

typedef struct {
    double ts;
    int64_t off, len;
} RawEntry;
#define RAW_ENTRY ((Py_ssize_t)sizeof(RawEntry))

/* a (timestamp, frame) record, the frame copied from p */
static PyObject *record_tuple(double ts, const unsigned char *p, Py_ssize_t n) {
    PyObject *t = PyFloat_FromDouble(ts);
    PyObject *fr = t ? PyBytes_FromStringAndSize((const char *)p, n) : NULL;
    PyObject *rec = fr ? PyTuple_New(2) : NULL;
    if (rec == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(fr);
        return NULL;
    }
    PyTuple_SET_ITEM(rec, 0, t);
    PyTuple_SET_ITEM(rec, 1, fr);
    return rec;
}

static PyObject *pcap_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, limit;
    int big;
    double unit;
    unsigned long long max_record, snaplen = 0;
    long long shard = 0, shards = 1;
    int dlt = 1, raw = 0;
    if (!PyArg_ParseTuple(args, "y*npdnK|KLLip", &view, &pos, &big, &unit, &limit, &max_record, &snaplen, &shard,
                          &shards, &dlt, &raw))
        return NULL;
    if (shards < 1 || shard < 0 || shard >= shards) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pcap_records: need 0 <= shard < shards");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t blen = view.len;
    PyObject *list = raw ? NULL : PyList_New(0);
    RawEntry *ix = NULL;   /* raw: the index, nix entries of cix */
    Py_ssize_t nix = 0, cix = 0;
    if (!raw && list == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    long long bad = -1;
    unsigned long long cut = 0;   /* the shortest captured length of a record cut short of its packet */
    long long over_orig = 0, over_snap = 0;   /* records whose caplen is above their origlen / the snaplen */
    if (pos < 0)
        pos = 0;
    while ((raw ? nix : PyList_GET_SIZE(list)) < limit && blen - pos >= 16) {
        const unsigned char *h = b + pos;
        uint32_t sec = big ? be32(h) : le32(h);
        uint32_t frac = big ? be32(h + 4) : le32(h + 4);
        uint32_t caplen = big ? be32(h + 8) : le32(h + 8);
        if ((unsigned long long)caplen > max_record) {
            bad = (long long)caplen;
            break;
        }
        uint32_t origlen = big ? be32(h + 12) : le32(h + 12);
        if ((Py_ssize_t)caplen > blen - pos - 16)
            break;
        /* a record longer than the packet it holds (kept trimmed to it) or than the snaplen (kept): counted */
        int over_o = caplen > origlen, over_s = snaplen && caplen > snaplen;
        Py_ssize_t keep = over_o ? (Py_ssize_t)origlen : (Py_ssize_t)caplen;
        if (!over_o && !over_s && caplen < origlen && (cut == 0 || caplen < cut))
            cut = caplen;
        if (shards > 1 && !in_shard(h + 16, keep, dlt, shard, shards)) {
            pos += 16 + (Py_ssize_t)caplen;
            continue;
        }
        over_orig += over_o;
        over_snap += over_s;
        if (raw) {
            if (nix == cix) {
                Py_ssize_t nc = cix ? 2 * cix : 256;
                RawEntry *g = PyMem_Realloc(ix, (size_t)nc * sizeof(RawEntry));
                if (g == NULL) {
                    PyMem_Free(ix);
                    PyBuffer_Release(&view);
                    return PyErr_NoMemory();
                }
                ix = g;
                cix = nc;
            }
            ix[nix].ts = (double)sec + (double)frac * unit;
            ix[nix].off = (int64_t)(pos + 16);
            ix[nix].len = (int64_t)keep;
            nix++;
            pos += 16 + (Py_ssize_t)caplen;
            continue;
        }
        PyObject *rec = record_tuple((double)sec + (double)frac * unit, h + 16, keep);
        if (rec == NULL) {
            Py_DECREF(list);
            PyBuffer_Release(&view);
            return NULL;
        }
        if (PyList_Append(list, rec) < 0) {
            Py_DECREF(rec);
            Py_DECREF(list);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(rec);
        pos += 16 + (Py_ssize_t)caplen;
    }
    PyBuffer_Release(&view);
    if (raw) {
        list = PyBytes_FromStringAndSize((const char *)ix, nix * RAW_ENTRY);
        PyMem_Free(ix);
        if (list == NULL)
            return NULL;
    }
    return Py_BuildValue("(NnLKLL)", list, pos, bad, cut, over_orig, over_snap);
}

/* raw_records(buf, index): the (timestamp, frame) records of pcap_records' raw index into buf */
static PyObject *raw_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view, iv;
    if (!PyArg_ParseTuple(args, "y*y*", &view, &iv))
        return NULL;
    PyObject *list = NULL;
    if (iv.len % RAW_ENTRY) {
        PyErr_SetString(PyExc_ValueError, "raw_records: not an index of pcap_records");
        goto done;
    }
    Py_ssize_t n = iv.len / RAW_ENTRY;
    list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        RawEntry e;
        memcpy(&e, (const char *)iv.buf + i * RAW_ENTRY, sizeof e);
        if (e.off < 0 || e.len < 0 || e.off > view.len || e.len > view.len - e.off) {
            PyErr_SetString(PyExc_ValueError, "raw_records: a record outside its buffer");
            Py_CLEAR(list);
            break;
        }
        PyObject *rec = record_tuple(e.ts, (const unsigned char *)view.buf + e.off, (Py_ssize_t)e.len);
        if (rec == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, rec);
    }
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&iv);
    return list;
}

/* Collector: a packet callback for pypcap's dispatch() that appends (ts, frame) to a list without
 * a Python frame per packet; take() returns the list and starts a new one. */
typedef struct {
    PyObject_HEAD
    PyObject *list;
} Collector;

static int Collector_init(Collector *self, PyObject *args, PyObject *kw) {
    (void)args;
    (void)kw;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return -1;
    Py_XSETREF(self->list, list);
    return 0;
}

static void Collector_dealloc(Collector *self) {
    Py_XDECREF(self->list);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Collector_call(Collector *self, PyObject *args, PyObject *kw) {
    (void)kw;
    if (PyTuple_GET_SIZE(args) < 2) {
        PyErr_SetString(PyExc_TypeError, "Collector(ts, frame, ...)");
        return NULL;
    }
    PyObject *ts = PyTuple_GET_ITEM(args, 0);
    PyObject *frame = PyTuple_GET_ITEM(args, 1);
    PyObject *rec;
    if (PyBytes_CheckExact(frame)) {
        rec = PyTuple_Pack(2, ts, frame);
    } else {
        PyObject *b = PyBytes_FromObject(frame);
        if (b == NULL)
            return NULL;
        rec = PyTuple_Pack(2, ts, b);
        Py_DECREF(b);
    }
    if (rec == NULL)
        return NULL;
    if (self->list == NULL || PyList_Append(self->list, rec) < 0) {
        Py_DECREF(rec);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "Collector not initialised");
        return NULL;
    }
    Py_DECREF(rec);
    Py_RETURN_NONE;
}

static PyObject *Collector_take(Collector *self, PyObject *unused) {
    (void)unused;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *out = self->list;
    self->list = fresh;
    if (out == NULL)
        return PyList_New(0);
    return out;
}

static PyMethodDef Collector_methods[] = {
    {"take", (PyCFunction)Collector_take, METH_NOARGS, "The records collected so far (and start a new list)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CollectorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.capture._fastpath.Collector",
    .tp_basicsize = sizeof(Collector),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "pypcap dispatch() callback collecting (ts, frame) records.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Collector_init,
    .tp_dealloc = (destructor)Collector_dealloc,
    .tp_call = (ternaryfunc)Collector_call,
    .tp_methods = Collector_methods,
};

static PyMethodDef methods[] = {
    {"eth4", eth4, METH_O, "Fast path of the meter for untagged Ethernet/IPv4 TCP and UDP frames."},
    {"pcap_records", pcap_records, METH_VARARGS, "Whole pcap records from a buffer, as (timestamp, frame)."},
    {"raw_records", raw_records, METH_VARARGS, "The (timestamp, frame) records of a raw pcap_records index."},
    {"shard_hash", shard_hash, METH_VARARGS, "Symmetric hash of a frame's IP addresses (-1: no IP header)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&CollectorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "RAW_ENTRY", (long)RAW_ENTRY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&CollectorType);
    if (PyModule_AddObject(m, "Collector", (PyObject *)&CollectorType) < 0) {
        Py_DECREF(&CollectorType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
