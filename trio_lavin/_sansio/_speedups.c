/*
 * The message properties codec of _properties.py, in C, for the values
 * that change on every message.
 *
 * decode_properties(data, pos, end) and encode_properties(properties,
 * headers=None) give what the Python functions of the same name give.
 * They handle the usual cases themselves: text, every integer width,
 * floats, booleans, byte strings, void, nested tables and arrays, and
 * the timestamp property.  For anything else (a Decimal, a datetime in a
 * header, a subclass, text with surrogates to encode, malformed input)
 * they call the Python function, which is the reference: it gives the
 * value or raises the error, with the message it has.  So this file never
 * needs its own error messages, and a malformed frame costs only time.
 *
 * Every read is checked against the buffer's length.  Pure: no I/O, no
 * clock, no global state but what setup() is given.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <string.h>

#define MAX_DEPTH 64
#define PROPERTY_COUNT 14

/* Wire order: content_type first, cluster_id last (the flag bits 0x8000 down to 0x0004). */
static const char *const PROPERTY_NAMES[PROPERTY_COUNT] = {
    "content_type", "content_encoding", "headers",  "delivery_mode", "priority",
    "correlation_id", "reply_to",       "expiration", "message_id",  "timestamp",
    "message_type", "user_id",          "app_id",   "cluster_id",
};
enum {
    P_CONTENT_TYPE, P_CONTENT_ENCODING, P_HEADERS, P_DELIVERY_MODE, P_PRIORITY,
    P_CORRELATION_ID, P_REPLY_TO, P_EXPIRATION, P_MESSAGE_ID, P_TIMESTAMP,
    P_MESSAGE_TYPE, P_USER_ID, P_APP_ID, P_CLUSTER_ID,
};

typedef struct {
    PyTypeObject *properties_type; /* BasicProperties */
    Py_ssize_t offsets[PROPERTY_COUNT]; /* of its slots, in wire order */
    PyObject *decode_fallback;     /* the Python decode_properties */
    PyObject *encode_fallback;     /* the Python encode_properties */
    PyObject *decode_timestamp;    /* seconds -> datetime or int */
    PyObject *encode_timestamp;    /* value -> 8 bytes (the timestamp property) */
} State;

static State state;

#define SLOT(obj, i) (*(PyObject **)((char *)(obj) + state.offsets[i]))

/* "Give up and let the Python function do it": not an error. */
#define FALLBACK ((PyObject *)1)

/* -- decoding ---------------------------------------------------------------- */

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
} Reader;

static inline uint16_t get_u16(const unsigned char *p) {
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t get_u32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t get_u64(const unsigned char *p) {
    return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
}

static PyObject *text(const unsigned char *p, Py_ssize_t n) {
    return PyUnicode_DecodeUTF8((const char *)p, n, "surrogateescape");
}

static PyObject *decode_value(Reader *r, Py_ssize_t *pos, int depth);

/* The table or array at *pos (its 32-bit length first); FALLBACK if malformed. */
static PyObject *decode_table(Reader *r, Py_ssize_t *pos, int depth) {
    if (depth > MAX_DEPTH || *pos + 4 > r->size) {
        return FALLBACK;
    }
    Py_ssize_t end = *pos + 4 + (Py_ssize_t)get_u32(r->data + *pos);
    Py_ssize_t at = *pos + 4;
    if (end > r->size) {
        return FALLBACK;
    }
    PyObject *result = PyDict_New();
    if (result == NULL) {
        return NULL;
    }
    while (at < end) {
        Py_ssize_t key_end = at + 1 + r->data[at];
        if (key_end >= end) {
            Py_DECREF(result);
            return FALLBACK;
        }
        PyObject *key = text(r->data + at + 1, key_end - at - 1);
        if (key == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        at = key_end;
        PyObject *value = decode_value(r, &at, depth);
        if (value == NULL || value == FALLBACK) {
            Py_DECREF(key);
            Py_DECREF(result);
            return value;
        }
        int failed = PyDict_SetItem(result, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed) {
            Py_DECREF(result);
            return NULL;
        }
    }
    if (at != end) {
        Py_DECREF(result);
        return FALLBACK;
    }
    *pos = end;
    return result;
}

static PyObject *decode_array(Reader *r, Py_ssize_t *pos, int depth) {
    if (depth > MAX_DEPTH || *pos + 4 > r->size) {
        return FALLBACK;
    }
    Py_ssize_t end = *pos + 4 + (Py_ssize_t)get_u32(r->data + *pos);
    Py_ssize_t at = *pos + 4;
    if (end > r->size) {
        return FALLBACK;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL) {
        return NULL;
    }
    while (at < end) {
        PyObject *value = decode_value(r, &at, depth);
        if (value == NULL || value == FALLBACK) {
            Py_DECREF(result);
            return value;
        }
        int failed = PyList_Append(result, value);
        Py_DECREF(value);
        if (failed) {
            Py_DECREF(result);
            return NULL;
        }
    }
    if (at != end) {
        Py_DECREF(result);
        return FALLBACK;
    }
    *pos = end;
    return result;
}

/* A type octet and its value at *pos, in a table or array nested ``depth`` deep. */
static PyObject *decode_value(Reader *r, Py_ssize_t *pos, int depth) {
    const unsigned char *d = r->data;
    Py_ssize_t at = *pos;
    if (at >= r->size) {
        return FALLBACK;
    }
    unsigned char kind = d[at++];
    Py_ssize_t left = r->size - at;
    PyObject *value;
    switch (kind) {
    case 'S':
    case 'x': {
        if (left < 4) {
            return FALLBACK;
        }
        Py_ssize_t n = (Py_ssize_t)get_u32(d + at);
        if (n > left - 4) {
            return FALLBACK;
        }
        at += 4;
        value = kind == 'S' ? text(d + at, n) : PyBytes_FromStringAndSize((const char *)d + at, n);
        at += n;
        break;
    }
    case 'b':
        if (left < 1) return FALLBACK;
        value = PyLong_FromLong((signed char)d[at]);
        at += 1;
        break;
    case 'B':
        if (left < 1) return FALLBACK;
        value = PyLong_FromLong(d[at]);
        at += 1;
        break;
    case 't':
        if (left < 1) return FALLBACK;
        value = PyBool_FromLong(d[at] != 0);
        at += 1;
        break;
    case 's':
        if (left < 2) return FALLBACK;
        value = PyLong_FromLong((int16_t)get_u16(d + at));
        at += 2;
        break;
    case 'u':
        if (left < 2) return FALLBACK;
        value = PyLong_FromLong(get_u16(d + at));
        at += 2;
        break;
    case 'I':
        if (left < 4) return FALLBACK;
        value = PyLong_FromLong((int32_t)get_u32(d + at));
        at += 4;
        break;
    case 'i':
        if (left < 4) return FALLBACK;
        value = PyLong_FromUnsignedLong(get_u32(d + at));
        at += 4;
        break;
    case 'l':
    case 'L': /* signed, as RabbitMQ reads it */
        if (left < 8) return FALLBACK;
        value = PyLong_FromLongLong((int64_t)get_u64(d + at));
        at += 8;
        break;
    case 'f': {
        if (left < 4) return FALLBACK;
        double x = PyFloat_Unpack4((const char *)d + at, 0);
        if (x == -1.0 && PyErr_Occurred()) return NULL;
        value = PyFloat_FromDouble(x);
        at += 4;
        break;
    }
    case 'd': {
        if (left < 8) return FALLBACK;
        double x = PyFloat_Unpack8((const char *)d + at, 0);
        if (x == -1.0 && PyErr_Occurred()) return NULL;
        value = PyFloat_FromDouble(x);
        at += 8;
        break;
    }
    case 'T': {
        if (left < 8) return FALLBACK;
        PyObject *seconds = PyLong_FromUnsignedLongLong(get_u64(d + at));
        if (seconds == NULL) return NULL;
        value = PyObject_CallOneArg(state.decode_timestamp, seconds);
        Py_DECREF(seconds);
        at += 8;
        break;
    }
    case 'V':
    case 0:
        value = Py_NewRef(Py_None);
        break;
    case 'F':
        value = decode_table(r, &at, depth + 1);
        break;
    case 'A':
        value = decode_array(r, &at, depth + 1);
        break;
    default: /* D (a Decimal), and the unknown types the Python code refuses */
        return FALLBACK;
    }
    if (value != NULL && value != FALLBACK) {
        *pos = at;
    }
    return value;
}

static PyObject *fallback_decode(PyObject *data, Py_ssize_t pos, Py_ssize_t end) {
    return PyObject_CallFunction(state.decode_fallback, "Onn", data, pos, end);
}

/* Properties from the flag word at pos; NULL with an error, or FALLBACK. */
static PyObject *decode_into(PyObject *props, Reader *r, Py_ssize_t pos, Py_ssize_t end) {
    const unsigned char *d = r->data;
    if (pos < 0 || pos + 2 > r->size) {
        return FALLBACK;
    }
    unsigned int flags = get_u16(d + pos);
    pos += 2;
    unsigned int word = flags;
    while (word & 1) { /* further flag words: no property of Basic has a bit there */
        if (pos + 2 > r->size) {
            return FALLBACK;
        }
        word = get_u16(d + pos);
        pos += 2;
    }
    for (int i = 0; i < PROPERTY_COUNT; i++) {
        PyObject *value;
        if (!(flags & (0x8000u >> i))) {
            value = Py_NewRef(Py_None);
        } else if (i == P_HEADERS) {
            value = decode_table(r, &pos, 1);
        } else if (i == P_DELIVERY_MODE || i == P_PRIORITY) {
            if (pos >= r->size) {
                return FALLBACK;
            }
            value = PyLong_FromLong(d[pos]);
            pos += 1;
        } else if (i == P_TIMESTAMP) {
            if (pos + 8 > r->size) {
                return FALLBACK;
            }
            PyObject *seconds = PyLong_FromUnsignedLongLong(get_u64(d + pos));
            if (seconds == NULL) {
                return NULL;
            }
            value = PyObject_CallOneArg(state.decode_timestamp, seconds);
            Py_DECREF(seconds);
            pos += 8;
        } else {
            if (pos >= r->size || pos + 1 + d[pos] > r->size) {
                return FALLBACK;
            }
            Py_ssize_t n = d[pos];
            value = text(d + pos + 1, n);
            pos += 1 + n;
        }
        if (value == NULL || value == FALLBACK) {
            return value;
        }
        SLOT(props, i) = value;
    }
    if (pos > end) {
        return FALLBACK;
    }
    return props;
}

static PyObject *decode_properties(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode_properties(data, pos, end) takes 3 arguments");
        return NULL;
    }
    if (state.properties_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "trio_lavin._sansio._speedups.setup() was not called");
        return NULL;
    }
    Py_ssize_t pos = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (pos == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return PyObject_Vectorcall(state.decode_fallback, args, 3, NULL);
    }
    Py_ssize_t end = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (end == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return PyObject_Vectorcall(state.decode_fallback, args, 3, NULL);
    }
    Py_buffer view;
    if (!(PyBytes_CheckExact(args[0]) || PyByteArray_CheckExact(args[0]))) {
        return PyObject_Vectorcall(state.decode_fallback, args, 3, NULL);
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Reader reader = {(const unsigned char *)view.buf, view.len};
    PyTypeObject *type = state.properties_type;
    PyObject *props = type->tp_alloc(type, 0);
    PyObject *result = props == NULL ? NULL : decode_into(props, &reader, pos, end);
    PyBuffer_Release(&view);
    if (result == FALLBACK) {
        Py_DECREF(props);
        return fallback_decode(args[0], pos, end);
    }
    if (result == NULL) {
        Py_XDECREF(props);
        return NULL;
    }
    return result;
}

/* -- encoding ---------------------------------------------------------------- */

typedef struct {
    unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
    unsigned char small[512];
} Writer;

static int grow(Writer *w, Py_ssize_t extra) {
    if (extra > PY_SSIZE_T_MAX - w->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = w->len + extra;
    if (need <= w->cap) {
        return 0;
    }
    Py_ssize_t cap = w->cap;
    while (cap < need) {
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    }
    unsigned char *buf;
    if (w->buf == w->small) {
        buf = PyMem_Malloc(cap);
        if (buf != NULL) {
            memcpy(buf, w->small, w->len);
        }
    } else {
        buf = PyMem_Realloc(w->buf, cap);
    }
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = buf;
    w->cap = cap;
    return 0;
}

#define NEED(w, n) \
    if ((w)->len + (Py_ssize_t)(n) > (w)->cap && grow((w), (n)) < 0) return -1

static inline void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static inline void put_u64(unsigned char *p, uint64_t v) {
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

/* Results of the encoders: 0 done, -1 error set, 1 fall back to Python. */
#define GIVE_UP 1

static int utf8(PyObject *s, const char **p, Py_ssize_t *n) {
    *p = PyUnicode_AsUTF8AndSize(s, n);
    if (*p == NULL) { /* surrogates: the Python code knows what to do */
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            return -1;
        }
        PyErr_Clear();
        return GIVE_UP;
    }
    return 0;
}

static int put_shortstr(Writer *w, PyObject *s) {
    if (!PyUnicode_CheckExact(s)) {
        return GIVE_UP;
    }
    const char *p;
    Py_ssize_t n;
    int status = utf8(s, &p, &n);
    if (status) {
        return status;
    }
    if (n > 255) {
        return GIVE_UP;
    }
    NEED(w, 1 + n);
    w->buf[w->len] = (unsigned char)n;
    memcpy(w->buf + w->len + 1, p, n);
    w->len += 1 + n;
    return 0;
}

static int put_long_bytes(Writer *w, unsigned char kind, const char *p, Py_ssize_t n) {
    if ((size_t)n > 0xFFFFFFFFu) {
        return GIVE_UP;
    }
    NEED(w, 5 + n);
    w->buf[w->len] = kind;
    put_u32(w->buf + w->len + 1, (uint32_t)n);
    memcpy(w->buf + w->len + 5, p, n);
    w->len += 5 + n;
    return 0;
}

static int put_table(Writer *w, PyObject *table, int depth);
static int put_array(Writer *w, PyObject *seq, int depth);

/* A value's type octet and bytes (the narrowest integer type, as _integer). */
static int put_value(Writer *w, PyObject *v, int depth) {
    if (PyUnicode_CheckExact(v)) {
        const char *p;
        Py_ssize_t n;
        int status = utf8(v, &p, &n);
        return status ? status : put_long_bytes(w, 'S', p, n);
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            return GIVE_UP;
        }
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        NEED(w, 9);
        unsigned char *p = w->buf + w->len;
        if (-128 <= x && x <= 127) {
            p[0] = 'b';
            p[1] = (unsigned char)(signed char)x;
            w->len += 2;
        } else if (-32768 <= x && x <= 32767) {
            p[0] = 's';
            p[1] = (unsigned char)((uint16_t)x >> 8);
            p[2] = (unsigned char)x;
            w->len += 3;
        } else if (0 <= x && x <= 65535) {
            p[0] = 'u';
            p[1] = (unsigned char)(x >> 8);
            p[2] = (unsigned char)x;
            w->len += 3;
        } else if (-2147483648LL <= x && x <= 2147483647LL) {
            p[0] = 'I';
            put_u32(p + 1, (uint32_t)x);
            w->len += 5;
        } else if (0 <= x && x <= 4294967295LL) {
            p[0] = 'i';
            put_u32(p + 1, (uint32_t)x);
            w->len += 5;
        } else {
            p[0] = 'l';
            put_u64(p + 1, (uint64_t)x);
            w->len += 9;
        }
        return 0;
    }
    if (v == Py_None) {
        NEED(w, 1);
        w->buf[w->len++] = 'V';
        return 0;
    }
    if (PyBool_Check(v)) {
        NEED(w, 2);
        w->buf[w->len] = 't';
        w->buf[w->len + 1] = v == Py_True;
        w->len += 2;
        return 0;
    }
    if (PyFloat_CheckExact(v)) {
        NEED(w, 9);
        w->buf[w->len] = 'd';
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), (char *)w->buf + w->len + 1, 0) < 0) {
            return -1;
        }
        w->len += 9;
        return 0;
    }
    if (PyBytes_CheckExact(v)) {
        return put_long_bytes(w, 'x', PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    }
    if (PyByteArray_CheckExact(v)) {
        return put_long_bytes(w, 'x', PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v));
    }
    if (PyDict_CheckExact(v)) {
        NEED(w, 1);
        w->buf[w->len++] = 'F';
        return put_table(w, v, depth + 1);
    }
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        NEED(w, 1);
        w->buf[w->len++] = 'A';
        return put_array(w, v, depth + 1);
    }
    return GIVE_UP; /* datetime, Decimal, subclasses, and what cannot go in a table */
}

/* The 32-bit length is written last, when the entries are there. */
static int close_length(Writer *w, Py_ssize_t at) {
    Py_ssize_t n = w->len - at - 4;
    if ((size_t)n > 0xFFFFFFFFu) {
        return GIVE_UP;
    }
    put_u32(w->buf + at, (uint32_t)n);
    return 0;
}

static int put_table(Writer *w, PyObject *table, int depth) {
    if (depth > MAX_DEPTH) {
        return GIVE_UP;
    }
    NEED(w, 4);
    Py_ssize_t at = w->len;
    w->len += 4;
    Py_ssize_t i = 0;
    PyObject *key, *value;
    /* No Python code runs in here, so the dict cannot change under us. */
    while (PyDict_Next(table, &i, &key, &value)) {
        int status = put_shortstr(w, key);
        if (!status) {
            status = put_value(w, value, depth);
        }
        if (status) {
            return status;
        }
    }
    return close_length(w, at);
}

static int put_array(Writer *w, PyObject *seq, int depth) {
    if (depth > MAX_DEPTH) {
        return GIVE_UP;
    }
    NEED(w, 4);
    Py_ssize_t at = w->len;
    w->len += 4;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        int status = put_value(w, items[i], depth);
        if (status) {
            return status;
        }
    }
    return close_length(w, at);
}

static int put_octet(Writer *w, PyObject *v) {
    if (!PyLong_CheckExact(v)) {
        return GIVE_UP;
    }
    int overflow;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    if (overflow || x < 0 || x > 255) {
        return GIVE_UP;
    }
    NEED(w, 1);
    w->buf[w->len++] = (unsigned char)x;
    return 0;
}

/* Days from 1970-01-01 to the given date of the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int put_timestamp(Writer *w, PyObject *v) {
    NEED(w, 8);
    if (PyLong_CheckExact(v)) {
        unsigned long long x = PyLong_AsUnsignedLongLong(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            PyErr_Clear();
            return GIVE_UP; /* negative or past 2**64 - 1 */
        }
        put_u64(w->buf + w->len, x);
        w->len += 8;
        return 0;
    }
    if (PyDateTime_CheckExact(v) && PyDateTime_DATE_GET_TZINFO(v) == PyDateTime_TimeZone_UTC) {
        int year = PyDateTime_GET_YEAR(v);
        if (year >= 1970 && year < 2200) {
            /* What the Python code gives, int(value.timestamp()): the whole
             * seconds (the microseconds never round them up before 2514). */
            int64_t seconds = days_from_civil(year, PyDateTime_GET_MONTH(v),
                                              PyDateTime_GET_DAY(v)) * 86400 +
                              PyDateTime_DATE_GET_HOUR(v) * 3600 +
                              PyDateTime_DATE_GET_MINUTE(v) * 60 + PyDateTime_DATE_GET_SECOND(v);
            put_u64(w->buf + w->len, (uint64_t)seconds);
            w->len += 8;
            return 0;
        }
    }
    /* Any other datetime (another zone, naive, a subclass) or value: the Python code. */
    PyObject *encoded = PyObject_CallOneArg(state.encode_timestamp, v);
    if (encoded == NULL) {
        return -1;
    }
    if (!PyBytes_CheckExact(encoded) || PyBytes_GET_SIZE(encoded) != 8) {
        Py_DECREF(encoded);
        return GIVE_UP;
    }
    memcpy(w->buf + w->len, PyBytes_AS_STRING(encoded), 8);
    w->len += 8;
    Py_DECREF(encoded);
    return 0;
}

static int encode_into(Writer *w, PyObject *props, PyObject *headers) {
    w->len = 2;
    unsigned int flags = 0;
    for (int i = 0; i < PROPERTY_COUNT; i++) {
        PyObject *value = i == P_HEADERS && headers != Py_None ? headers : SLOT(props, i);
        if (value == NULL) {
            return GIVE_UP; /* an unset slot: the Python code raises AttributeError */
        }
        if (value == Py_None) {
            continue;
        }
        flags |= 0x8000u >> i;
        int status;
        if (i == P_HEADERS) {
            status = PyDict_CheckExact(value) ? put_table(w, value, 1) : GIVE_UP;
        } else if (i == P_DELIVERY_MODE || i == P_PRIORITY) {
            status = put_octet(w, value);
        } else if (i == P_TIMESTAMP) {
            status = put_timestamp(w, value);
        } else {
            status = put_shortstr(w, value);
        }
        if (status) {
            return status;
        }
    }
    w->buf[0] = (unsigned char)(flags >> 8);
    w->buf[1] = (unsigned char)flags;
    return 0;
}

static PyObject *encode_properties(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    if (state.properties_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "trio_lavin._sansio._speedups.setup() was not called");
        return NULL;
    }
    if (kwnames != NULL || nargs < 1 || nargs > 2) {
        return PyObject_Vectorcall(state.encode_fallback, args, nargs, kwnames);
    }
    PyObject *props = args[0];
    PyObject *headers = nargs == 2 ? args[1] : Py_None;
    if (props != Py_None && Py_TYPE(props) != state.properties_type) {
        return PyObject_Vectorcall(state.encode_fallback, args, nargs, NULL);
    }
    Writer w;
    w.buf = w.small;
    w.cap = sizeof(w.small);
    w.len = 0;
    int status;
    if (props == Py_None) {
        if (headers == Py_None) {
            return PyBytes_FromStringAndSize("\x00\x00", 2);
        }
        w.buf[0] = 0x20;
        w.buf[1] = 0;
        w.len = 2;
        status = PyDict_CheckExact(headers) ? put_table(&w, headers, 1) : GIVE_UP;
    } else {
        status = encode_into(&w, props, headers);
    }
    PyObject *result = NULL;
    if (status == 0) {
        result = PyBytes_FromStringAndSize((const char *)w.buf, w.len);
    } else if (status == GIVE_UP) {
        result = PyObject_Vectorcall(state.encode_fallback, args, nargs, NULL);
    }
    if (w.buf != w.small) {
        PyMem_Free(w.buf);
    }
    return result;
}

/* -- a whole message ------------------------------------------------------------ */

static PyObject *frame_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "frame_message() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *method = args[0], *props = args[2], *body = args[3];
    if (!PyBytes_CheckExact(method) || !PyBytes_CheckExact(props) || !PyBytes_CheckExact(body)) {
        PyErr_SetString(PyExc_TypeError, "frame_message() takes bytes for the method, "
                                         "properties and body");
        return NULL;
    }
    long channel = PyLong_AsLong(args[1]);
    if (channel == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t method_size = PyBytes_GET_SIZE(method), props_size = PyBytes_GET_SIZE(props);
    Py_ssize_t body_size = PyBytes_GET_SIZE(body);
    if (channel < 0 || channel > 0xFFFF || props_size > 0xFFFFFFFF - 12 ||
        body_size > 0xFFFFFFFF) {
        PyErr_Format(PyExc_ValueError,
                     "frame_message(): channel %ld, %zd bytes of properties and a body of %zd "
                     "bytes do not fit the frames",
                     channel, props_size, body_size);
        return NULL;
    }
    /* method | header frame: 7 + 12 + properties + 1 | body frame: 7 + body + 1 */
    PyObject *result =
        PyBytes_FromStringAndSize(NULL, method_size + 20 + props_size + 8 + body_size);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
    memcpy(p, PyBytes_AS_STRING(method), method_size);
    p += method_size;
    p[0] = 2; /* a content header frame */
    p[1] = (unsigned char)(channel >> 8);
    p[2] = (unsigned char)channel;
    put_u32(p + 3, (uint32_t)(12 + props_size));
    p[7] = 0; /* class 60, Basic */
    p[8] = 60;
    p[9] = 0; /* weight */
    p[10] = 0;
    put_u64(p + 11, (uint64_t)body_size);
    memcpy(p + 19, PyBytes_AS_STRING(props), props_size);
    p += 19 + props_size;
    p[0] = 0xCE;
    p[1] = 3; /* a body frame */
    p[2] = (unsigned char)(channel >> 8);
    p[3] = (unsigned char)channel;
    put_u32(p + 4, (uint32_t)body_size);
    memcpy(p + 8, PyBytes_AS_STRING(body), body_size);
    p[8 + body_size] = 0xCE;
    return result;
}

/* -- setup ------------------------------------------------------------------- */

static PyObject *setup(PyObject *module, PyObject *args) {
    PyObject *type, *decode_fallback, *encode_fallback, *decode_ts, *encode_ts;
    if (!PyArg_ParseTuple(args, "O!OOOO:setup", &PyType_Type, &type, &decode_fallback,
                          &encode_fallback, &decode_ts, &encode_ts)) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)type;
    Py_ssize_t offsets[PROPERTY_COUNT];
    for (int i = 0; i < PROPERTY_COUNT; i++) {
        PyObject *descr = PyDict_GetItemString(tp->tp_dict, PROPERTY_NAMES[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", tp->tp_name, PROPERTY_NAMES[i]);
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot", tp->tp_name,
                         PROPERTY_NAMES[i]);
            return NULL;
        }
        offsets[i] = member->offset;
    }
    Py_XSETREF(state.decode_fallback, Py_NewRef(decode_fallback));
    Py_XSETREF(state.encode_fallback, Py_NewRef(encode_fallback));
    Py_XSETREF(state.decode_timestamp, Py_NewRef(decode_ts));
    Py_XSETREF(state.encode_timestamp, Py_NewRef(encode_ts));
    memcpy(state.offsets, offsets, sizeof(offsets));
    Py_XSETREF(state.properties_type, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(BasicProperties, decode_properties, encode_properties, decode_timestamp, "
     "encode_timestamp_property): the class to make and the Python functions to fall back on."},
    {"decode_properties", (PyCFunction)(void (*)(void))decode_properties, METH_FASTCALL,
     "decode_properties(data, pos, end): as _properties.decode_properties_py."},
    {"encode_properties", (PyCFunction)(void (*)(void))encode_properties,
     METH_FASTCALL | METH_KEYWORDS,
     "encode_properties(properties, headers=None): as _properties.encode_properties_py."},
    {"frame_message", (PyCFunction)(void (*)(void))frame_message, METH_FASTCALL,
     "frame_message(method_frame, channel, properties, body): as "
     "_publishing.frame_message_py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trio_lavin._sansio._speedups",
    .m_doc = "The message properties codec in C (see _properties.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
