/* librdkafka's messages wrapped as `LibrdkafkaRecord`s in C, a fetch at a time.
 *
 * Why C: the worker creates a record for every message it consumes, and creating one in
 * Python (a type call and an `__init__` frame storing three slots) cost ~116 ns a record at
 * best and about a fifth of a no-op worker's GIL time under load, the largest cost the
 * worker added to a raw `consume()` loop. Here each record is one allocation and three
 * stores into the slots `__init__` would set.
 *
 * `bind` reads where those slots live from the class's own member descriptors (never from
 * assumed offsets), once, at import of `librdkafka_records`. Each record made must be what
 * `LibrdkafkaRecord.__init__` makes: `_message` the message, `value` its `value()`,
 * `serialized_value_size` -1 for None else its length; tests/unit/test_librdkafka_wrap.py
 * checks the two agree field by field.
 *
 * `runs` does what `by_partition` does with a fetch of messages without errors, in one
 * pass: the records, cut into runs of one partition (or topic and partition). It returns
 * None at the first message that carries an error: the caller takes the Python path,
 * which handles them. A method call per field read (`error()`, `partition()`, `value()`)
 * cost ~35-45 ns a message through `map`; so `bind` also finds, by probing messages it
 * makes with known, unique fields, where a `Message` keeps the objects those methods
 * return (and the int32 partition), and reads them there. Only a field that holds an
 * object (a partition other than -1) is read directly; an empty one (NULL) is asked of
 * the method, so a layout whose methods compute what the field lacks is still right. A
 * probe that does not find each field at exactly one offset, the same in every probe,
 * leaves every read to the methods.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"

static PyTypeObject *RECORD;  /* LibrdkafkaRecord, once bound */
static PyTypeObject *MESSAGE; /* confluent_kafka.Message */
static PyObject *VALUE_OF;    /* Message.value, unbound: called per message */
static PyObject *ERROR_OF, *PARTITION_OF, *TOPIC_OF; /* Message.error, .partition, .topic */
static Py_ssize_t AT_MESSAGE, AT_VALUE, AT_SIZE;
static destructor PYTHON_DEALLOC; /* the tp_dealloc of every class a class statement makes */

/* Where a message keeps what `value()`, `error()` and `topic()` return and the partition,
 * found by `probe_layout`; `direct` 0 when not found (every read is a method call). */
typedef struct {
    int direct;
    Py_ssize_t value, error, topic, partition;
} layout;

static layout LAYOUT = {0, -1, -1, -1, -1};

/* One binding, as `runs` uses it for a whole call: a gc callback, a value's `__len__` or
 * another thread may call `bind` again mid-call, and a record allocated by one class must
 * never be stored into at another class's offsets (a heap overflow once seen). */
typedef struct {
    PyTypeObject *record, *message;
    PyObject *value_of, *error_of, *partition_of, *topic_of;
    Py_ssize_t at_message, at_value, at_size;
    layout fields;
    int exact_fast; /* messages of exactly `message` may be read without a method lookup */
} binding;

/* The offset of `cls`'s own writable object slot `name`, or -1 with TypeError. */
static Py_ssize_t
slot_offset(PyTypeObject *cls, const char *name)
{
    PyObject *descr = PyDict_GetItemString(cls->tp_dict, name); /* borrowed */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)
        || ((PyDescrObject *)descr)->d_type != cls) {
        PyErr_Format(PyExc_TypeError, "bind: %s.%s is not a slot of its own", cls->tp_name,
                     name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    /* Another slot's descriptor stored under this name (`R.value = R.__dict__["_message"]`)
     * would make two fields one offset: one reference overwritten, leaked. */
    if (strcmp(member->name, name) != 0 || member->type != T_OBJECT_EX
        || (member->flags & READONLY) || member->offset < (Py_ssize_t)sizeof(PyObject)
        || member->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "bind: %s.%s is not a writable object slot",
                     cls->tp_name, name);
        return -1;
    }
    return member->offset;
}


/* The one offset in `message` of a pointer to `object`, or -1. */
static Py_ssize_t
pointer_at(PyObject *message, PyObject *object)
{
    Py_ssize_t found = -1, size = Py_TYPE(message)->tp_basicsize;
    for (Py_ssize_t at = sizeof(PyObject); at + (Py_ssize_t)sizeof(PyObject *) <= size;
         at += sizeof(PyObject *)) {
        if (*(PyObject **)((char *)message + at) == object) {
            if (found >= 0) {
                return -1;
            }
            found = at;
        }
    }
    return found;
}

/* The offsets in `message` of an int32 equal to `value`, as a bit set of 4-byte steps
 * (a message's struct is far below 64 of them: more is refused by the caller). */
static uint64_t
int32s_at(PyObject *message, int32_t value)
{
    uint64_t found = 0;
    Py_ssize_t size = Py_TYPE(message)->tp_basicsize;
    for (Py_ssize_t at = sizeof(PyObject); at + 4 <= size && at / 4 < 64; at += 4) {
        if (*(int32_t *)((char *)message + at) == value) {
            found |= (uint64_t)1 << (at / 4);
        }
    }
    return found;
}

/* `cls(topic=..., partition=..., value=..., error=...)` with unique objects, the fields'
 * offsets read off it into `out`; 0 if the class cannot be probed so (no error left set). */
static int
probe_once(PyObject *cls, int32_t partition, layout *out, uint64_t *partitions)
{
    int ok = 0;
    PyObject *topic = PyUnicode_FromFormat("streamworker-probe-%d", (int)partition);
    PyObject *value = PyBytes_FromFormat("streamworker-probe-%d", (int)partition);
    PyObject *error = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    PyObject *number = PyLong_FromLong(partition);
    PyObject *kwargs = NULL, *empty = NULL, *message = NULL;
    if (topic == NULL || value == NULL || error == NULL || number == NULL) {
        goto done;
    }
    kwargs = Py_BuildValue("{sOsOsOsO}", "topic", topic, "partition", number, "value", value,
                           "error", error);
    empty = PyTuple_New(0);
    if (kwargs == NULL || empty == NULL) {
        goto done;
    }
    message = PyObject_Call(cls, empty, kwargs);
    if (message == NULL || !Py_IS_TYPE(message, (PyTypeObject *)cls)) {
        goto done;
    }
    /* The methods give back the very objects given: then the fields hold them. */
    PyObject *got[4] = {PyObject_CallMethod(message, "topic", NULL),
                        PyObject_CallMethod(message, "value", NULL),
                        PyObject_CallMethod(message, "error", NULL),
                        PyObject_CallMethod(message, "partition", NULL)};
    int same = got[0] == topic && got[1] == value && got[2] == error && got[3] != NULL
               && PyLong_CheckExact(got[3]) && PyLong_AsLong(got[3]) == partition;
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(got[i]);
    }
    if (!same) {
        goto done;
    }
    out->topic = pointer_at(message, topic);
    out->value = pointer_at(message, value);
    out->error = pointer_at(message, error);
    *partitions = int32s_at(message, partition);
    ok = out->topic >= 0 && out->value >= 0 && out->error >= 0;
done:
    PyErr_Clear();
    Py_XDECREF(message);
    Py_XDECREF(empty);
    Py_XDECREF(kwargs);
    Py_XDECREF(number);
    Py_XDECREF(error);
    Py_XDECREF(value);
    Py_XDECREF(topic);
    return ok;
}

/* Where `cls`'s instances keep their fields: each at one offset, the same in two probes of
 * different partitions, four distinct places; and a message made empty has NULL there and
 * -1 for the partition, which its methods read as None. Else `direct` is 0. */
static layout
probe_layout(PyObject *cls)
{
    layout none = {0, -1, -1, -1, -1}, a, b;
    uint64_t pa = 0, pb = 0;
    PyTypeObject *type = (PyTypeObject *)cls;
    if (type->tp_basicsize > 64 * 4 || !(type->tp_flags & Py_TPFLAGS_IMMUTABLETYPE)
        || type->tp_dictoffset != 0 || !probe_once(cls, 0x2A5A17, &a, &pa)
        || !probe_once(cls, 0x13C3B5, &b, &pb)) {
        return none;
    }
    uint64_t both = pa & pb;
    if (a.topic != b.topic || a.value != b.value || a.error != b.error || both == 0
        || (both & (both - 1)) != 0) {
        return none;
    }
    Py_ssize_t partition = 0;
    while (!((both >> (partition / 4)) & 1)) {
        partition += 4;
    }
    Py_ssize_t at[3] = {a.topic, a.value, a.error};
    for (int i = 0; i < 3; i++) {
        int overlaps = partition + 4 > at[i] && partition < at[i] + (Py_ssize_t)sizeof(void *);
        if (overlaps || at[i] == at[(i + 1) % 3]) {
            return none;
        }
    }
    PyObject *empty = PyObject_CallNoArgs(cls);
    if (empty == NULL || !Py_IS_TYPE(empty, type)) {
        PyErr_Clear();
        Py_XDECREF(empty);
        return none;
    }
    PyObject *p = PyObject_CallMethod(empty, "partition", NULL);
    int fits = p == Py_None && *(int32_t *)((char *)empty + partition) == -1;
    for (int i = 0; i < 3; i++) {
        fits = fits && *(PyObject **)((char *)empty + at[i]) == NULL;
    }
    Py_XDECREF(p);
    Py_DECREF(empty);
    PyErr_Clear();
    if (!fits) {
        return none;
    }
    layout found = {1, a.value, a.error, a.topic, partition};
    return found;
}

PyDoc_STRVAR(bind_doc,
"bind(record_class, message_class)\n"
"--\n\n"
"Make `runs` create `record_class` instances from `message_class` instances: the class's\n"
"slots `_message`, `value` and `serialized_value_size` are found by their descriptors, and\n"
"the message class's fields by probing it (see `direct`).");

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind takes a record class and a message class");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (!(cls->tp_flags & Py_TPFLAGS_HEAPTYPE) || cls->tp_alloc == NULL
        || cls->tp_itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "bind: %s is not a class of fixed-size instances",
                     cls->tp_name);
        return NULL;
    }
    /* `runs` allocates without `__new__`: right for a class statement's classes down to
     * `object` (their instances are slots, all NULL until set), but a subclass of a C type
     * (set, Exception, ...) would get that type's struct zeroed, never initialised: its
     * methods, repr or dealloc then crash. */
    for (PyTypeObject *t = cls; t != &PyBaseObject_Type; t = t->tp_base) {
        if (t == NULL || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE)
            || t->tp_dealloc != PYTHON_DEALLOC) {
            PyErr_Format(PyExc_TypeError,
                         "bind: %s is not a class of Python classes down to object",
                         cls->tp_name);
            return NULL;
        }
    }
    Py_ssize_t at_message = slot_offset(cls, "_message");
    Py_ssize_t at_value = at_message < 0 ? -1 : slot_offset(cls, "value");
    Py_ssize_t at_size = at_value < 0 ? -1 : slot_offset(cls, "serialized_value_size");
    if (at_size < 0) {
        return NULL;
    }
    if (at_message == at_value || at_message == at_size || at_value == at_size) {
        PyErr_Format(PyExc_TypeError, "bind: %s's slots share an offset", cls->tp_name);
        return NULL;
    }
    PyObject *value_of = PyObject_GetAttrString(args[1], "value");
    PyObject *error_of = PyObject_GetAttrString(args[1], "error");
    PyObject *partition_of = PyObject_GetAttrString(args[1], "partition");
    PyObject *topic_of = PyObject_GetAttrString(args[1], "topic");
    if (value_of == NULL || error_of == NULL || partition_of == NULL || topic_of == NULL) {
        Py_XDECREF(value_of);
        Py_XDECREF(error_of);
        Py_XDECREF(partition_of);
        Py_XDECREF(topic_of);
        return NULL;
    }
    /* Probed before anything is bound: the probe runs Python code (the class's methods). */
    layout fields = probe_layout(args[1]);
    /* Every global set before any old reference is released: a release can run Python
     * code (a `__del__`, another thread), which must find the binding whole, never a new
     * class with the old offsets (a heap overflow, seen). */
    PyObject *old[6] = {(PyObject *)RECORD, (PyObject *)MESSAGE, VALUE_OF, ERROR_OF,
                        PARTITION_OF, TOPIC_OF};
    RECORD = (PyTypeObject *)Py_NewRef(cls);
    MESSAGE = (PyTypeObject *)Py_NewRef(args[1]);
    VALUE_OF = value_of;
    ERROR_OF = error_of;
    PARTITION_OF = partition_of;
    TOPIC_OF = topic_of;
    LAYOUT = fields;
    AT_MESSAGE = at_message;
    AT_VALUE = at_value;
    AT_SIZE = at_size;
    for (int i = 0; i < 6; i++) {
        Py_XDECREF(old[i]);
    }
    Py_RETURN_NONE;
}

/* `message.<name>()` as Python code calls it: the object the probed field at `at` holds (-1:
 * none), else the bound class's method, unless the message is of a subclass (which may override it) or of a
 * class that can change after bind. A new reference, or NULL with an exception set. */
static PyObject *
read_field(const binding *b, PyObject *message, Py_ssize_t at, PyObject *method,
           const char *name)
{
    if (Py_IS_TYPE(message, b->message) && b->exact_fast) {
        if (b->fields.direct && at >= 0) {
            PyObject *held = *(PyObject **)((char *)message + at);
            if (held != NULL) {
                return Py_NewRef(held);
            }
        }
        return PyObject_Vectorcall(method, &message, 1, NULL);
    }
    return PyObject_CallMethod(message, name, NULL);
}

/* A record of `message` (a new reference), or NULL with an exception set. */
static PyObject *
wrapped(const binding *b, PyObject *message)
{
    PyObject *value = read_field(b, message, b->fields.value, b->value_of, "value");
    if (value == NULL) {
        return NULL;
    }
    Py_ssize_t n = -1;
    if (value != Py_None) {
        n = PyBytes_CheckExact(value) ? PyBytes_GET_SIZE(value) : PyObject_Size(value);
        if (n < 0) {
            Py_DECREF(value);
            return NULL;
        }
    }
    PyObject *size = PyLong_FromSsize_t(n);
    if (size == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    /* Nothing allocates between here and the stores: the collector, which tp_alloc may run,
     * sees the record either not yet made or whole. The offsets are the call's own, the
     * class's that allocated it, whatever a gc callback binds meanwhile. */
    PyObject *record = b->record->tp_alloc(b->record, 0);
    if (record == NULL) {
        Py_DECREF(value);
        Py_DECREF(size);
        return NULL;
    }
    Py_INCREF(message);
    *(PyObject **)((char *)record + b->at_message) = message;
    *(PyObject **)((char *)record + b->at_value) = value;
    *(PyObject **)((char *)record + b->at_size) = size;
    return record;
}

static PyObject *runs_with(const binding *b, PyObject *messages, int with_topic);

/* The binding of one call, held (`release` after): a `bind` meanwhile frees none of it.
 * 0 with an exception set when nothing is bound or `messages` is not a list. */
static int
hold_binding(binding *b, PyObject *messages, const char *call)
{
    if (RECORD == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: no record class bound", call);
        return 0;
    }
    if (!PyList_CheckExact(messages)) {
        PyErr_Format(PyExc_TypeError, "%s: messages must be a list", call);
        return 0;
    }
    binding held = {RECORD, MESSAGE, VALUE_OF, ERROR_OF, PARTITION_OF, TOPIC_OF,
                    AT_MESSAGE, AT_VALUE, AT_SIZE, LAYOUT,
                    (MESSAGE->tp_flags & Py_TPFLAGS_IMMUTABLETYPE) && MESSAGE->tp_dictoffset == 0};
    *b = held;
    Py_INCREF(b->record);
    Py_INCREF(b->message);
    Py_INCREF(b->value_of);
    Py_INCREF(b->error_of);
    Py_INCREF(b->partition_of);
    Py_INCREF(b->topic_of);
    return 1;
}

static void
release_binding(binding *b)
{
    Py_DECREF(b->record);
    Py_DECREF(b->message);
    Py_DECREF(b->value_of);
    Py_DECREF(b->error_of);
    Py_DECREF(b->partition_of);
    Py_DECREF(b->topic_of);
}

PyDoc_STRVAR(runs_doc,
"runs(messages, with_topic)\n"
"--\n\n"
"The records of the list `messages` in runs of one partition, in order: a list of\n"
"(partition, records), or of ((topic, partition), records) if `with_topic`; None if a\n"
"message carries an error (no record is then returned).");

static PyObject *
runs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "runs takes messages and with_topic");
        return NULL;
    }
    int with_topic = PyObject_IsTrue(args[1]);
    binding b;
    if (with_topic < 0 || !hold_binding(&b, args[0], "runs")) {
        return NULL;
    }
    PyObject *out = runs_with(&b, args[0], with_topic);
    release_binding(&b);
    return out;
}

/* Whether `message` carries an error (1), not (0), or -1 with an exception set. */
static int
has_error(const binding *b, PyObject *message)
{
    PyObject *error = read_field(b, message, b->fields.error, b->error_of, "error");
    if (error == NULL) {
        return -1;
    }
    int carries = error != Py_None;
    Py_DECREF(error);
    return carries;
}

/* `message.partition()`: the int32 the probe found, when it is not -1 (which the method
 * reads as None), else the method. A new reference, or NULL with an exception set. */
static PyObject *
partition_of(const binding *b, PyObject *message)
{
    if (Py_IS_TYPE(message, b->message) && b->exact_fast && b->fields.direct) {
        int32_t partition = *(int32_t *)((char *)message + b->fields.partition);
        if (partition != -1) {
            return PyLong_FromLong(partition);
        }
    }
    return read_field(b, message, -1, b->partition_of, "partition");
}

static PyObject *
runs_with(const binding *b, PyObject *messages, int with_topic)
{
    Py_ssize_t n = PyList_GET_SIZE(messages);
    PyObject *out = PyList_New(0);
    PyObject *key = NULL;  /* the current run's partition, or (topic, partition) */
    PyObject *run = NULL;  /* its records, held: Python code run mid-call (a gc callback, a
                            * topic's __eq__) could empty `out`, which holds it too */
    if (out == NULL) {
        return NULL;
    }
    /* Nor can it find `out` (gc.get_objects) until it is returned. */
    PyObject_GC_UnTrack(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_GET_SIZE(messages) != n) { /* changed by a gc callback */
            PyErr_SetString(PyExc_RuntimeError, "runs: messages changed size while read");
            goto fail;
        }
        PyObject *message = PyList_GET_ITEM(messages, i);
        if (!PyObject_TypeCheck(message, b->message)) {
            PyErr_Format(PyExc_TypeError, "runs: item %zd is %.200s, not %.200s", i,
                         Py_TYPE(message)->tp_name, b->message->tp_name);
            goto fail;
        }
        Py_INCREF(message);
        int carries = has_error(b, message);
        if (carries != 0) {
            Py_DECREF(message);
            if (carries < 0) {
                goto fail;
            }
            Py_XDECREF(key);
            Py_XDECREF(run);
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyObject *partition = partition_of(b, message);
        PyObject *this = partition;
        if (partition != NULL && with_topic) {
            PyObject *topic = read_field(b, message, b->fields.topic, b->topic_of, "topic");
            this = topic == NULL ? NULL : PyTuple_Pack(2, topic, partition);
            Py_XDECREF(topic);
            Py_DECREF(partition);
        }
        /* By ==, the run's key first, as `groupby` tells runs apart. */
        int same = this == NULL ? -1 : key == NULL ? 0 : PyObject_RichCompareBool(key, this, Py_EQ);
        if (same == 0) {
            PyObject *records = PyList_New(0);
            PyObject *pair = records == NULL ? NULL : PyTuple_Pack(2, this, records);
            if (pair == NULL || PyList_Append(out, pair) < 0) {
                same = -1;
            }
            else {
                Py_XSETREF(run, Py_NewRef(records));
                Py_XSETREF(key, Py_NewRef(this));
            }
            Py_XDECREF(pair);
            Py_XDECREF(records);
        }
        Py_XDECREF(this);
        PyObject *record = same < 0 ? NULL : wrapped(b, message);
        Py_DECREF(message);
        if (record == NULL || PyList_Append(run, record) < 0) {
            Py_XDECREF(record);
            goto fail;
        }
        Py_DECREF(record);
    }
    Py_XDECREF(key);
    Py_XDECREF(run);
    PyObject_GC_Track(out);
    return out;
fail:
    Py_XDECREF(key);
    Py_XDECREF(run);
    Py_DECREF(out);
    return NULL;
}

PyDoc_STRVAR(direct_doc,
"direct()\n"
"--\n\n"
"Whether the bound message class's fields were found by the probe (read directly), as\n"
"(value, error, topic, partition) offsets, or None (every read is a method call).");

static PyObject *
direct(PyObject *module, PyObject *unused)
{
    if (!LAYOUT.direct) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(nnnn)", LAYOUT.value, LAYOUT.error, LAYOUT.topic, LAYOUT.partition);
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, bind_doc},
    {"runs", (PyCFunction)(void (*)(void))runs, METH_FASTCALL, runs_doc},
    {"direct", direct, METH_NOARGS, direct_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_librdkafka_wrap",
    "librdkafka's messages wrapped as records, in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__librdkafka_wrap(void)
{
    /* The dealloc every class statement's class has (CPython's subtype_dealloc), from one. */
    PyObject *probe = PyObject_CallFunction((PyObject *)&PyType_Type, "s()N", "probe",
                                            PyDict_New());
    if (probe == NULL) {
        return NULL;
    }
    PYTHON_DEALLOC = ((PyTypeObject *)probe)->tp_dealloc;
    Py_DECREF(probe);
    return PyModule_Create(&module);
}
