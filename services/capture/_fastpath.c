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
 *   pcap_records(buf, pos, big_endian, ts_unit, limit, max_record[, snaplen])
 *                -> (records, new_pos, bad_caplen)
 *       Up to ``limit`` whole pcap records from ``buf`` at ``pos`` as a list
 *       of (timestamp, frame).  Stops at the first record that is not wholly
 *       in ``buf`` (the caller reads more) or whose caplen exceeds
 *       ``max_record`` (returned as bad_caplen; otherwise -1), or, with -2,
 *       at a record whose caplen exceeds its original length or a non-zero
 *       ``snaplen`` (the caller counts and reads that one itself).
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

static PyObject *pcap_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, limit;
    int big;
    double unit;
    unsigned long long max_record, snaplen = 0;
    if (!PyArg_ParseTuple(args, "y*npdnK|K", &view, &pos, &big, &unit, &limit, &max_record, &snaplen))
        return NULL;
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t blen = view.len;
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    long long bad = -1;
    if (pos < 0)
        pos = 0;
    while (PyList_GET_SIZE(list) < limit && blen - pos >= 16) {
        const unsigned char *h = b + pos;
        uint32_t sec = big ? be32(h) : le32(h);
        uint32_t frac = big ? be32(h + 4) : le32(h + 4);
        uint32_t caplen = big ? be32(h + 8) : le32(h + 8);
        if ((unsigned long long)caplen > max_record) {
            bad = (long long)caplen;
            break;
        }
        if (caplen > (big ? be32(h + 12) : le32(h + 12)) || (snaplen && caplen > snaplen)) {
            bad = -2;
            break;
        }
        if ((Py_ssize_t)caplen > blen - pos - 16)
            break;
        PyObject *ts = PyFloat_FromDouble((double)sec + (double)frac * unit);
        PyObject *fr = PyBytes_FromStringAndSize((const char *)(h + 16), (Py_ssize_t)caplen);
        PyObject *rec = (ts && fr) ? PyTuple_New(2) : NULL;
        if (rec == NULL) {
            Py_XDECREF(ts);
            Py_XDECREF(fr);
            Py_DECREF(list);
            PyBuffer_Release(&view);
            return NULL;
        }
        PyTuple_SET_ITEM(rec, 0, ts);
        PyTuple_SET_ITEM(rec, 1, fr);
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
    return Py_BuildValue("(NnL)", list, pos, bad);
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&CollectorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CollectorType);
    if (PyModule_AddObject(m, "Collector", (PyObject *)&CollectorType) < 0) {
        Py_DECREF(&CollectorType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
