/* The records of an AWS Lambda Kafka event, built in C from one partition's columns.
 *
 * Why C: building MSK-style records (a dict of eight fields and base64 text of the key and
 * value per record) cost about 1.2 us a record in Python, more than librdkafka takes to
 * deliver the record, and a Lambda-style handler pays it for every record. Here each record
 * is one copy of a template dict (keys already laid out, no resize) and six stores, and the
 * base64 text is written straight into its str (no intermediate bytes object).
 *
 * `events._kafka_records` is the same function in Python: it runs when this module is not
 * built, and tests/unit/test_lambda_kafka_rows.py checks the two agree record by record.
 * Nothing here keeps state between calls but the interned field names.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *TOPIC, *PARTITION, *OFFSET, *TIMESTAMP, *TIMESTAMP_TYPE, *KEY, *VALUE,
    *HEADERS;

static const char ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Two base64 characters for each 12-bit value: two lookups per three bytes instead of
 * four (8 KiB, filled at import). 190-byte values: ~60 ns against ~110 a value. */
static Py_UCS1 PAIRS[4096][2];

static void
fill_pairs(void)
{
    for (int i = 0; i < 4096; i++) {
        PAIRS[i][0] = (Py_UCS1)ALPHABET[i >> 6];
        PAIRS[i][1] = (Py_UCS1)ALPHABET[i & 63];
    }
}

/* `data` as standard base64 text with padding, a new str. */
static PyObject *
base64_text(const unsigned char *data, Py_ssize_t n)
{
    if (n > (PY_SSIZE_T_MAX / 4) * 3 - 3) {
        return PyErr_NoMemory();
    }
    Py_ssize_t size = ((n + 2) / 3) * 4;
    PyObject *text = PyUnicode_New(size, 127);
    if (text == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned int v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
        memcpy(out, PAIRS[v >> 12], 2);
        memcpy(out + 2, PAIRS[v & 4095], 2);
        out += 4;
    }
    if (i < n) {
        unsigned int v = data[i] << 16;
        if (i + 1 < n) {
            v |= data[i + 1] << 8;
        }
        *out++ = ALPHABET[(v >> 18) & 63];
        *out++ = ALPHABET[(v >> 12) & 63];
        *out++ = i + 1 < n ? ALPHABET[(v >> 6) & 63] : '=';
        *out++ = '=';
    }
    return text;
}

/* A key or value as base64 text: None stays None; bytes, or any buffer (bytearray,
 * memoryview), is encoded; anything else is a TypeError, as binascii would raise. */
static PyObject *
encoded(PyObject *item)
{
    if (item == Py_None) {
        Py_RETURN_NONE;
    }
    if (PyBytes_CheckExact(item)) {
        return base64_text((const unsigned char *)PyBytes_AS_STRING(item),
                           PyBytes_GET_SIZE(item));
    }
    Py_buffer view;
    if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *text = base64_text((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return text;
}

/* A new dict with the template's layout and six of its fields replaced. Steals nothing. */
static PyObject *
record(PyObject *layout, PyObject *offset, PyObject *stamp, PyObject *name, PyObject *key,
       PyObject *value, PyObject *headers)
{
    PyObject *row = PyDict_Copy(layout);
    if (row == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(row, OFFSET, offset) < 0 || PyDict_SetItem(row, TIMESTAMP, stamp) < 0
        || PyDict_SetItem(row, TIMESTAMP_TYPE, name) < 0
        || (key != NULL && PyDict_SetItem(row, KEY, key) < 0)
        || PyDict_SetItem(row, VALUE, value) < 0 || PyDict_SetItem(row, HEADERS, headers) < 0) {
        Py_DECREF(row);
        return NULL;
    }
    return row;
}

/* The layout of the records of a run, keyed or not (the key is omitted when None). */
static PyObject *
layout(PyObject *topic, PyObject *partition, int keyed)
{
    PyObject *row = PyDict_New();
    if (row == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(row, TOPIC, topic) < 0 || PyDict_SetItem(row, PARTITION, partition) < 0
        || PyDict_SetItem(row, OFFSET, Py_None) < 0
        || PyDict_SetItem(row, TIMESTAMP, Py_None) < 0
        || PyDict_SetItem(row, TIMESTAMP_TYPE, Py_None) < 0
        || (keyed && PyDict_SetItem(row, KEY, Py_None) < 0)
        || PyDict_SetItem(row, VALUE, Py_None) < 0 || PyDict_SetItem(row, HEADERS, Py_None) < 0) {
        Py_DECREF(row);
        return NULL;
    }
    return row;
}

static int
column(PyObject *list, const char *name, Py_ssize_t n)
{
    if (!PyList_CheckExact(list)) {
        PyErr_Format(PyExc_TypeError, "kafka_rows: %s must be a list", name);
        return -1;
    }
    if (PyList_GET_SIZE(list) != n) {
        PyErr_Format(PyExc_ValueError, "kafka_rows: %s has %zd items, offsets %zd", name,
                     PyList_GET_SIZE(list), n);
        return -1;
    }
    return 0;
}

/* 0 if every column is still `n` long, else -1 with RuntimeError: `convert`, or a headers
 * object's truth, may run Python code that shrinks a column, and the loop reads each column
 * at an index checked against `n` once, so it would read past the list's end (a freed item,
 * or NULL). Checked at each record, as list iteration in Python checks its bounds. */
static int
unchanged(PyObject *const *columns, Py_ssize_t n)
{
    for (int c = 0; c < 6; c++) {
        if (PyList_GET_SIZE(columns[c]) != n) {
            PyErr_SetString(PyExc_RuntimeError,
                            "kafka_rows: a column changed size while its records were built");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(kafka_rows_doc,
"kafka_rows(topic, partition, offsets, stamps, names, keys, values, headers, convert)\n"
"--\n\n"
"One partition's records as Lambda's Kafka event records, from columns (lists of equal\n"
"length): base64 key (omitted when None) and value (None kept), and headers: `[]` for\n"
"none, else `convert(headers)`.");

static PyObject *
kafka_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "kafka_rows takes 9 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *topic = args[0], *partition = args[1], *offsets = args[2], *stamps = args[3],
             *names = args[4], *keys = args[5], *values = args[6], *headers = args[7],
             *convert = args[8];
    if (!PyList_CheckExact(offsets)) {
        PyErr_SetString(PyExc_TypeError, "kafka_rows: offsets must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(offsets);
    if (column(stamps, "stamps", n) < 0 || column(names, "names", n) < 0
        || column(keys, "keys", n) < 0 || column(values, "values", n) < 0
        || column(headers, "headers", n) < 0) {
        return NULL;
    }
    PyObject *keyed = NULL, *unkeyed = NULL, *out = PyList_New(n);
    if (out == NULL) {
        return NULL;
    }
    /* Until every slot is filled `out` holds NULLs, which Python code must never see, and
     * `convert` could find it through gc.get_objects(): untracked, the collector neither
     * lists it nor needs to (nothing it holds can refer back to it). */
    PyObject_GC_UnTrack(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (unchanged(args + 2, n) < 0) {
            Py_XDECREF(keyed);
            Py_XDECREF(unkeyed);
            Py_DECREF(out);
            return NULL;
        }
        /* Items are borrowed from the lists, which a `convert` written in Python could
         * change while it runs: hold them across the call. */
        PyObject *offset = PyList_GET_ITEM(offsets, i), *stamp = PyList_GET_ITEM(stamps, i),
                 *name = PyList_GET_ITEM(names, i), *k = PyList_GET_ITEM(keys, i),
                 *v = PyList_GET_ITEM(values, i), *hs = PyList_GET_ITEM(headers, i);
        Py_INCREF(offset);
        Py_INCREF(stamp);
        Py_INCREF(name);
        Py_INCREF(k);
        Py_INCREF(v);
        Py_INCREF(hs);
        PyObject *key = NULL, *value = NULL, *h = NULL, *row = NULL;
        int truth = PyObject_IsTrue(hs);
        if (truth < 0) {
            goto release;
        }
        h = truth ? PyObject_CallOneArg(convert, hs) : PyList_New(0);
        if (h == NULL) {
            goto release;
        }
        value = encoded(v);
        if (value == NULL) {
            goto release;
        }
        if (k != Py_None) {
            key = encoded(k);
            if (key == NULL) {
                goto release;
            }
            if (keyed == NULL && (keyed = layout(topic, partition, 1)) == NULL) {
                goto release;
            }
            row = record(keyed, offset, stamp, name, key, value, h);
        }
        else {
            if (unkeyed == NULL && (unkeyed = layout(topic, partition, 0)) == NULL) {
                goto release;
            }
            row = record(unkeyed, offset, stamp, name, NULL, value, h);
        }
    release:
        Py_XDECREF(key);
        Py_XDECREF(value);
        Py_XDECREF(h);
        Py_DECREF(offset);
        Py_DECREF(stamp);
        Py_DECREF(name);
        Py_DECREF(k);
        Py_DECREF(v);
        Py_DECREF(hs);
        if (row == NULL) {
            Py_XDECREF(keyed);
            Py_XDECREF(unkeyed);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, row);
    }
    Py_XDECREF(keyed);
    Py_XDECREF(unkeyed);
    PyObject_GC_Track(out);
    return out;
}

static PyMethodDef methods[] = {
    {"kafka_rows", (PyCFunction)(void (*)(void))kafka_rows, METH_FASTCALL, kafka_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kafka_rows", "Lambda's Kafka event records, built in C.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__kafka_rows(void)
{
    fill_pairs();
    struct {
        PyObject **name;
        const char *text;
    } names[] = {
        {&TOPIC, "topic"}, {&PARTITION, "partition"}, {&OFFSET, "offset"},
        {&TIMESTAMP, "timestamp"}, {&TIMESTAMP_TYPE, "timestampType"}, {&KEY, "key"},
        {&VALUE, "value"}, {&HEADERS, "headers"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].name == NULL
            && (*names[i].name = PyUnicode_InternFromString(names[i].text)) == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
