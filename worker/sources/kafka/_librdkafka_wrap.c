/* librdkafka's messages wrapped as `LibrdkafkaRecord`s in C, a list at a time.
 *
 * Why C: the worker creates a record for every message it consumes, and creating one in
 * Python (a type call and an `__init__` frame storing three slots) cost ~116 ns a record at
 * best and about a fifth of a no-op worker's GIL time under load, the largest cost the
 * worker added to a raw `consume()` loop. Here each record is one allocation and three
 * stores into the slots `__init__` would set.
 *
 * `bind` reads where those slots live from the class's own member descriptors (never from
 * assumed offsets), once, at import of `librdkafka_records`. `wrap` must do exactly what
 * `LibrdkafkaRecord.__init__` does: `_message` the message, `value` its `value()`,
 * `serialized_value_size` -1 for None else its length; tests/unit/test_librdkafka_wrap.py
 * checks the two agree field by field.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"

static PyTypeObject *RECORD;  /* LibrdkafkaRecord, once bound */
static PyTypeObject *MESSAGE; /* confluent_kafka.Message */
static PyObject *VALUE_OF;    /* Message.value, unbound: called per message */
static Py_ssize_t AT_MESSAGE, AT_VALUE, AT_SIZE;
static destructor PYTHON_DEALLOC; /* the tp_dealloc of every class a class statement makes */

/* One binding, as `wrap` uses it for a whole call: a gc callback, a value's `__len__` or
 * another thread may call `bind` again mid-call, and a record allocated by one class must
 * never be stored into at another class's offsets (a heap overflow once seen). */
typedef struct {
    PyTypeObject *record, *message;
    PyObject *value_of;
    Py_ssize_t at_message, at_value, at_size;
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

PyDoc_STRVAR(bind_doc,
"bind(record_class, message_class)\n"
"--\n\n"
"Make `wrap` create `record_class` instances from `message_class` instances: the class's\n"
"slots `_message`, `value` and `serialized_value_size` are found by their descriptors.");

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
    /* `wrap` allocates without `__new__`: right for a class statement's classes down to
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
    if (value_of == NULL) {
        return NULL;
    }
    Py_INCREF(cls);
    Py_INCREF(args[1]);
    Py_XSETREF(RECORD, cls);
    Py_XSETREF(MESSAGE, (PyTypeObject *)args[1]);
    Py_XSETREF(VALUE_OF, value_of);
    AT_MESSAGE = at_message;
    AT_VALUE = at_value;
    AT_SIZE = at_size;
    Py_RETURN_NONE;
}

/* A record of `message` (a new reference), or NULL with an exception set. */
static PyObject *
wrapped(const binding *b, PyObject *message)
{
    /* `message.value()` as `__init__` calls it: the bound class's method, unless the message
     * is of a subclass (which may override it) or of a class that can change after bind. */
    PyObject *value;
    if (Py_IS_TYPE(message, b->message) && (b->message->tp_flags & Py_TPFLAGS_IMMUTABLETYPE)
        && b->message->tp_dictoffset == 0) {
        value = PyObject_Vectorcall(b->value_of, &message, 1, NULL);
    }
    else {
        value = PyObject_CallMethod(message, "value", NULL);
    }
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

PyDoc_STRVAR(wrap_doc,
"wrap(messages)\n"
"--\n\n"
"A list of the bound record class, one per message of the list `messages`, in order.");

static PyObject *wrap_with(const binding *b, PyObject *messages);

static PyObject *
wrap(PyObject *module, PyObject *messages)
{
    if (RECORD == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "wrap: no record class bound");
        return NULL;
    }
    if (!PyList_CheckExact(messages)) {
        PyErr_SetString(PyExc_TypeError, "wrap: messages must be a list");
        return NULL;
    }
    /* The binding of this call, held: a `bind` meanwhile frees none of it. */
    binding b = {RECORD, MESSAGE, VALUE_OF, AT_MESSAGE, AT_VALUE, AT_SIZE};
    Py_INCREF(b.record);
    Py_INCREF(b.message);
    Py_INCREF(b.value_of);
    PyObject *out = wrap_with(&b, messages);
    Py_DECREF(b.record);
    Py_DECREF(b.message);
    Py_DECREF(b.value_of);
    return out;
}

static PyObject *
wrap_with(const binding *b, PyObject *messages)
{
    Py_ssize_t n = PyList_GET_SIZE(messages);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        return NULL;
    }
    /* `out` holds NULLs until full, which Python code (a gc callback run by an allocation
     * here) must never see through gc.get_objects(): untracked until then. */
    PyObject_GC_UnTrack(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        /* A gc callback could also change `messages`: its length is checked at each item,
         * and the item held while it is wrapped. */
        if (PyList_GET_SIZE(messages) != n) {
            PyErr_SetString(PyExc_RuntimeError, "wrap: messages changed size while wrapped");
            Py_DECREF(out);
            return NULL;
        }
        PyObject *message = PyList_GET_ITEM(messages, i);
        if (!PyObject_TypeCheck(message, b->message)) {
            PyErr_Format(PyExc_TypeError, "wrap: item %zd is %.200s, not %.200s", i,
                         Py_TYPE(message)->tp_name, b->message->tp_name);
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(message);
        PyObject *record = wrapped(b, message);
        Py_DECREF(message);
        if (record == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, record);
    }
    PyObject_GC_Track(out);
    return out;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, bind_doc},
    {"wrap", wrap, METH_O, wrap_doc},
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
