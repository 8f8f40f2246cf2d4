"""multiprocessing.managers: BaseManager, SyncManager, proxies.

The server is libcmp's manager server (one thread per client, a
shared-memory mailbox per same-machine client, the stdlib's framing and
handshake on sockets), started by the C extension; each method call on a
held object is dispatched in C, and each proxy call (``_callmethod`` and
the methods MakeProxyType makes, ``_cmp.ProxyMethod``) goes from the call
to the server in C. What stays here is the bookkeeping that runs once per
object or per manager, written after the stdlib's behaviour: the registry,
the server's own functions (create, incref, decref, ...), the typed proxy
classes and their argument mapping.

Token, RemoteError, Namespace, Value and the Array factory are the
stdlib's own, so that isinstance checks and except clauses written against
multiprocessing.managers work with ours, and so that a stdlib client or
server can read what ours send.
"""
import array
import queue
import threading
import traceback
import types
from multiprocessing import util
from multiprocessing.managers import (  # noqa: F401
    Array, Namespace, RemoteError, Token, Value, public_methods, all_methods)
from multiprocessing.process import AuthenticationString

from . import _cmp
from ._cmp import ManagerGoneError, ProcessError  # noqa: F401
from .connection import arbitrary_address

__all__ = ["BaseManager", "SyncManager", "BaseProxy", "Token", "SharedMemoryManager"]

# The server object of this process, when it is a manager's server: a
# proxy unpickled here refers to an object held here (RebuildProxy).
_this_server = None


_view_types = (type({}.items()), type({}.keys()), type({}.values()))


class State(object):
    __slots__ = ['value']
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


def _format_exc():
    return traceback.format_exc()


class Server(object):
    """The server's side, in the server process: the objects by id with
    their reference counts. Calls on held objects are dispatched by the C
    handler; it hands this object the server's own functions (_call) and
    every unusual request (_slow)."""

    public = ['shutdown', 'create', 'accept_connection', 'get_methods',
              'debug_info', 'number_of_objects', 'dummy', 'incref', 'decref']

    def __init__(self, registry, address, authkey, serializer, listen=False):
        if not isinstance(authkey, bytes):
            raise TypeError("Authkey {0!r} is type {1!s}, not bytes".format(authkey, type(authkey)))
        self.registry = registry
        self.authkey = AuthenticationString(authkey)
        self.address = address
        self.serializer = serializer
        # id -> (obj, exposed as a frozenset, method_to_typeid)
        self.id_to_obj = {'0': (None, frozenset(), None)}
        self.id_to_refcount = {}
        self.id_to_local_proxy_obj = {}
        self.mutex = threading.Lock()
        self.listener = None
        if listen:
            self.listener = _cmp._manager_listen(self, address, self.authkey)
            self.address = self.listener.address

    def serve_forever(self):
        """Serves in this process until a client's shutdown() (or Ctrl-C),
        then exits it, as the stdlib's does."""
        import sys
        if self.listener is None:
            raise ProcessError("this server does not listen here (see get_server())")
        self._in_server_process()
        try:
            self.listener.serve()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self._forget_server()
        sys.exit(0)

    def _forget_server(self):
        global _this_server
        _this_server = None

    def _in_server_process(self):
        global _this_server
        _this_server = self

    # ---- called by the C handler ----

    def _call(self, c, name, args, kwds):
        try:
            if name not in self.public:
                raise AttributeError('%r unrecognized' % (name,))
            return ('#RETURN', getattr(self, name)(c, *args, **kwds))
        except Exception:
            return ('#TRACEBACK', _format_exc())

    def _slow(self, c, ident, name, args, kwds):
        obj = None
        try:
            try:
                obj, exposed, gettypeid = self.id_to_obj[ident]
            except KeyError as ke:
                try:
                    obj, exposed, gettypeid = self.id_to_local_proxy_obj[ident]
                except KeyError:
                    raise ke
            if name not in exposed:
                raise AttributeError('method %r of %r object is not in exposed=%r' % (
                    name, type(obj), tuple(sorted(exposed))))
            function = getattr(obj, name)
            try:
                res = function(*args, **kwds)
            except Exception as e:
                return ('#ERROR', e)
            typeid = gettypeid and gettypeid.get(name, None)
            if typeid:
                return self._make_proxy(c, typeid, res)
            if isinstance(res, _view_types):
                res = list(res)
            return ('#RETURN', res)
        except AttributeError:
            fallback = self.fallback_mapping.get(name)
            if fallback is None:
                return ('#TRACEBACK', _format_exc())
            try:
                return ('#RETURN', fallback(obj, *args, **kwds))
            except Exception:
                return ('#TRACEBACK', _format_exc())
        except Exception:
            return ('#TRACEBACK', _format_exc())

    def _make_proxy(self, c, typeid, res):
        rident, rexposed = self.create(c, typeid, res)
        return ('#PROXY', (rexposed, Token(typeid, self.address, rident)))

    fallback_mapping = {
        '__str__': lambda obj: str(obj),
        '__repr__': lambda obj: repr(obj),
        '#GETVALUE': lambda obj: obj,
    }

    # ---- the server's own functions (the stdlib's names) ----

    def dummy(self, c):
        pass

    def accept_connection(self, c, name):
        return None  # every connection of ours serves both kinds of request

    def debug_info(self, c):
        with self.mutex:
            result = []
            for ident in sorted(self.id_to_refcount):
                if ident != '0':
                    result.append('  %s:       refcount=%s\n    %s' % (
                        ident, self.id_to_refcount[ident], str(self.id_to_obj[ident][0])[:75]))
            return '\n'.join(result)

    def number_of_objects(self, c):
        return len(self.id_to_refcount)

    def shutdown(self, c):
        return None  # the C handler stops the server after this reply

    def create(self, c, typeid, /, *args, **kwds):
        with self.mutex:
            callable, exposed, method_to_typeid, proxytype = self.registry[typeid]
            if callable is None:
                if kwds or (len(args) != 1):
                    raise ValueError("Without callable, must have one non-keyword argument")
                obj = args[0]
            else:
                obj = callable(*args, **kwds)
            if exposed is None:
                exposed = public_methods(obj)
            if method_to_typeid is not None:
                if not isinstance(method_to_typeid, dict):
                    raise TypeError("Method_to_typeid {0!r}: type {1!s}, not dict".format(
                        method_to_typeid, type(method_to_typeid)))
                exposed = list(exposed) + list(method_to_typeid)
            ident = '%x' % id(obj)
            self.id_to_obj[ident] = (obj, frozenset(exposed), method_to_typeid)
            if ident not in self.id_to_refcount:
                self.id_to_refcount[ident] = 0
        self.incref(c, ident)
        return ident, tuple(exposed)

    def get_methods(self, c, token):
        return tuple(self.id_to_obj[token.id][1])

    def incref(self, c, ident):
        with self.mutex:
            try:
                self.id_to_refcount[ident] += 1
            except KeyError as ke:
                if ident in self.id_to_local_proxy_obj:
                    self.id_to_refcount[ident] = 1
                    self.id_to_obj[ident] = self.id_to_local_proxy_obj[ident]
                else:
                    raise ke

    def decref(self, c, ident):
        if ident not in self.id_to_refcount and ident in self.id_to_local_proxy_obj:
            return
        dropped = None
        with self.mutex:
            if self.id_to_refcount[ident] <= 0:
                raise AssertionError("Id {0!s} ({1!r}) has refcount {2:n}, not 1+".format(
                    ident, self.id_to_obj[ident], self.id_to_refcount[ident]))
            self.id_to_refcount[ident] -= 1
            if self.id_to_refcount[ident] == 0:
                del self.id_to_refcount[ident]
                dropped = self.id_to_obj.pop(ident, None)
        # Freed outside the mutex: the object may hold proxies of this same
        # server (a managed list in a managed dict), whose decref needs it.
        del dropped


def _channel(address, authkey, serializer='pickle'):
    return _cmp._manager_channel(address, None if authkey is None else bytes(authkey), serializer)


def _convert(reply):
    kind, result = reply
    if kind == '#RETURN':
        return result
    raise convert_to_error(kind, result)


def convert_to_error(kind, result):
    if kind == '#ERROR':
        return result
    elif kind in ('#TRACEBACK', '#UNSERIALIZABLE'):
        if not isinstance(result, str):
            raise TypeError("Result {0!r} (kind '{1}') type is {2}, not str".format(
                result, kind, type(result)))
        if kind == '#UNSERIALIZABLE':
            return RemoteError('Unserializable message: %s\n' % result)
        return RemoteError(result)
    return ValueError('Unrecognized message type {!r}'.format(kind))


def _finalize_manager(process, address, state, shutdown_timeout):
    if process.exitcode is None:
        process.shutdown(shutdown_timeout)
    state.value = State.SHUTDOWN
    _cmp._manager_forget(address)


def _serve_in_child(server_class, registry, address, authkey, serializer, writer,
                    initializer, initargs):
    """The life of a manager's server started by a spawn or forkserver
    context: the same server as a forked one, in a new interpreter."""
    import signal
    # Ctrl-C goes to the whole process group: the starter shuts us down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    if initializer is not None:
        initializer(*initargs)
    server = server_class(registry, address, authkey, serializer, listen=True)
    writer.send(server.address)
    writer.close()
    server.serve_forever()


def _exit_with_parent():
    """A spawned server goes when the process that started it goes, as a
    forked one does (PR_SET_PDEATHSIG there): nothing else would stop it
    once its owner is killed."""
    from . import parent_process
    parent = parent_process()
    sentinel = getattr(parent, 'sentinel', None)
    if sentinel is None:
        return

    def watch():
        import os
        from .connection import wait
        wait([sentinel])
        os._exit(0)
    threading.Thread(target=watch, name='manager-parent-watch', daemon=True).start()


class _ContextServer(object):
    """A manager's server process started the context's way (spawn or
    forkserver), as the stdlib's start() does, with the interface of the
    forked one's handle (_cmp's ManagerProcess) that the manager uses."""

    def __init__(self, manager, address, initializer, initargs):
        from .connection import Pipe
        reader, writer = Pipe(duplex=False)
        self._authkey = bytes(manager._authkey)
        self._serializer = manager._serializer
        self._proc = manager._ctx.Process(
            target=_serve_in_child,
            args=(manager._Server, manager._registry, address, self._authkey,
                  manager._serializer, writer, initializer, initargs),
            name=type(manager).__name__ + '-server')
        self._proc.start()
        writer.close()
        try:
            self.address = reader.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError("the manager's server process failed to start (exit code %r; "
                               "see its traceback above)" % (self._proc.exitcode,)) from None
        finally:
            reader.close()

    pid = property(lambda self: self._proc.pid)
    exitcode = property(lambda self: self._proc.exitcode)

    def join(self, timeout=None):
        self._proc.join(timeout)
        return self._proc.exitcode is not None

    def shutdown(self, timeout=None):
        """Asks the server to stop, then stops it harder if it does not
        within timeout seconds. True if it stopped when asked."""
        try:
            _channel(self.address, self._authkey, self._serializer).request(
                None, 'shutdown', (), {})
        except Exception:
            pass  # gone already, or unable to answer: the join below tells
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(1.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            return False
        return True


class BaseManager(object):
    """A manager: start() runs its server in a process of its own (which
    dies with the thread that started it), connect() uses one that runs."""
    _registry = {}
    _Server = Server

    def __init__(self, address=None, authkey=None, serializer='pickle', ctx=None, *,
                 shutdown_timeout=1.0):
        from . import current_process, get_context
        if authkey is None:
            authkey = current_process().authkey
        if serializer not in ('pickle', 'xmlrpclib'):
            raise ValueError("unknown serializer %r" % (serializer,))
        self._address = address
        self._authkey = AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = serializer
        self._ctx = ctx or get_context()
        self._shutdown_timeout = shutdown_timeout
        self._process = None

    # what _check_initial's messages call the two
    _server_word, _manager_word = "server", "Manager"

    def _check_initial(self):
        if self._state.value != State.INITIAL:
            if self._state.value == State.STARTED:
                raise ProcessError("Already started " + self._server_word)
            elif self._state.value == State.SHUTDOWN:
                raise ProcessError(self._manager_word + " has shut down")
            raise ProcessError("Unknown state {!r}".format(self._state.value))

    def get_server(self):
        """The server, listening in this process: serve_forever() serves
        there until a client asks it to shut down."""
        self._check_initial()
        return self._Server(self._registry, self._address, bytes(self._authkey),
                            self._serializer, listen=True)

    def connect(self):
        self._call_server('dummy')
        self._state.value = State.STARTED

    def start(self, initializer=None, initargs=()):
        self._check_initial()
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        address = self._address
        if address is None:
            address = arbitrary_address('AF_UNIX')
        if getattr(self._ctx, '_name', 'fork') != 'fork':
            self._process = _ContextServer(self, address, initializer, tuple(initargs))
        else:
            server = self._Server(self._registry, address, bytes(self._authkey), self._serializer)
            if isinstance(address, tuple) and address[1] == 0:
                server.address = None  # the port is known once it listens
            self._process = _cmp._start_manager(server, address, bytes(self._authkey),
                                                initializer, tuple(initargs))
        self._address = self._process.address
        self._state.value = State.STARTED
        self.shutdown = util.Finalize(
            self, _finalize_manager,
            args=(self._process, self._address, self._state, self._shutdown_timeout),
            exitpriority=0)

    def _call_server(self, name, *args, **kwds):
        return _convert(_channel(self._address, self._authkey, self._serializer).request(
            None, name, args, kwds))

    def _create(self, typeid, /, *args, **kwds):
        assert self._state.value == State.STARTED, 'server not yet started'
        ident, exposed = self._call_server('create', typeid, *args, **kwds)
        return Token(typeid, self._address, ident), exposed

    def join(self, timeout=None):
        if self._process is not None:
            self._process.join(timeout)

    def _debug_info(self):
        return self._call_server('debug_info')

    def _number_of_objects(self):
        return self._call_server('number_of_objects')

    def __enter__(self):
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            raise ProcessError("Unable to start server")
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.shutdown()

    @property
    def address(self):
        return self._address

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None,
                 method_to_typeid=None, create_method=True):
        if '_registry' not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, '_exposed_', None)
        method_to_typeid = method_to_typeid or getattr(proxytype, '_method_to_typeid_', None)
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                assert type(key) is str, '%r is not a string' % key
                assert type(value) is str, '%r is not a string' % value
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        if create_method:
            def temp(self, /, *args, **kwds):
                token, exp = self._create(typeid, *args, **kwds)
                # create counted one reference: the proxy takes it over
                proxy = proxytype(token, self._serializer, manager=self,
                                  authkey=self._authkey, exposed=exp, incref=False)
                proxy._adopt_ref()
                return proxy
            temp.__name__ = typeid
            setattr(cls, typeid, temp)


class BaseProxy(_cmp.ProxyBase):
    """A proxy of an object held by a manager's server. Its state,
    _callmethod and reference counting are C (_cmp.ProxyBase)."""
    _address_to_local = {}

    def _getvalue(self):
        return self._callmethod('#GETVALUE')

    def _rebuild_returned(self, result):
        """The proxy of a '#PROXY' reply (a method of method_to_typeid)."""
        exposed, token = result
        manager = self._manager
        registry = manager._registry if manager is not None else SyncManager._registry
        proxytype = registry[token.typeid][-1]
        token.address = self._token.address
        proxy = proxytype(token, self._serializer, manager=manager, authkey=self._authkey,
                          exposed=exposed, incref=False)
        proxy._adopt_ref()
        return proxy

    def __reduce__(self):
        kwds = {}
        if _cmp._spawning():  # a spawned child has not the manager's key otherwise
            kwds['authkey'] = bytes(self._authkey)
        if getattr(self, '_isauto', False):
            kwds['exposed'] = self._exposed_
            return (RebuildProxy, (AutoProxy, self._token, self._serializer, kwds))
        return (RebuildProxy, (type(self), self._token, self._serializer, kwds))

    def __deepcopy__(self, memo):
        return self._getvalue()

    def __repr__(self):
        return '<%s object, typeid %r at %#x>' % (type(self).__name__, self._token.typeid, id(self))

    def __str__(self):
        try:
            return self._callmethod('__repr__')
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def RebuildProxy(func, token, serializer, kwds):
    """Unpickles a proxy: in the manager's own server process it refers to
    an object held there (and counts no reference of its own)."""
    server = _this_server
    if server is not None and server.address == token.address:
        kwds['manager_owned'] = True
        if token.id not in server.id_to_local_proxy_obj:
            server.id_to_local_proxy_obj[token.id] = server.id_to_obj[token.id]
    from . import current_process
    incref = (kwds.pop('incref', True) and
              not getattr(current_process(), '_inheriting', False))
    return func(token, serializer, incref=incref, **kwds)


def MakeProxyType(name, exposed, _cache={}):
    """A proxy class whose methods `exposed` call the referent's."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    dic = {meth: _cmp.ProxyMethod(meth) for meth in exposed}
    ProxyType = type(name, (BaseProxy,), dic)
    ProxyType._exposed_ = exposed
    _cache[(name, exposed)] = ProxyType
    return ProxyType


def AutoProxy(token, serializer, manager=None, authkey=None, exposed=None, incref=True,
              manager_owned=False):
    """A proxy of a type made for the referent's exposed methods."""
    if authkey is None and manager is not None:
        authkey = manager._authkey
    if authkey is None:
        from . import current_process
        authkey = current_process().authkey
    if exposed is None:
        exposed = _convert(_channel(token.address, authkey, serializer).request(
            None, 'get_methods', (token,), {}))
    ProxyType = MakeProxyType('AutoProxy[%s]' % token.typeid, exposed)
    proxy = ProxyType(token, serializer, manager=manager, authkey=authkey, incref=incref,
                      manager_owned=manager_owned)
    proxy._isauto = True
    return proxy


# ---- the typed proxies of SyncManager -------------------------------------

class IteratorProxy(BaseProxy):
    _exposed_ = ('__next__', 'send', 'throw', 'close')
    __next__ = _cmp.ProxyMethod('__next__')
    send = _cmp.ProxyMethod('send')
    throw = _cmp.ProxyMethod('throw')
    close = _cmp.ProxyMethod('close')

    def __iter__(self):
        return self


class AcquirerProxy(BaseProxy):
    _exposed_ = ('acquire', 'release')

    def acquire(self, blocking=True, timeout=None):
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod('acquire', args)

    release = _cmp.ProxyMethod('release')
    # `with lock:` in C: acquire() and release() with no arguments
    __enter__ = _cmp.ProxyMethod('acquire')
    __exit__ = _cmp.ProxyMethod('release', ignore_args=True)


class ConditionProxy(AcquirerProxy):
    _exposed_ = ('acquire', 'release', 'wait', 'notify', 'notify_all')

    def wait(self, timeout=None):
        return self._callmethod('wait', (timeout,))

    def notify(self, n=1):
        return self._callmethod('notify', (n,))

    notify_all = _cmp.ProxyMethod('notify_all')

    def wait_for(self, predicate, timeout=None):
        result = predicate()
        if result:
            return result
        if timeout is not None:
            endtime = time.monotonic() + timeout
        else:
            endtime = None
            waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    _exposed_ = ('is_set', 'set', 'clear', 'wait')
    is_set = _cmp.ProxyMethod('is_set')
    set = _cmp.ProxyMethod('set')
    clear = _cmp.ProxyMethod('clear')

    def wait(self, timeout=None):
        return self._callmethod('wait', (timeout,))


class BarrierProxy(BaseProxy):
    _exposed_ = ('__getattribute__', 'wait', 'abort', 'reset')

    def wait(self, timeout=None):
        return self._callmethod('wait', (timeout,))

    abort = _cmp.ProxyMethod('abort')
    reset = _cmp.ProxyMethod('reset')

    @property
    def parties(self):
        return self._callmethod('__getattribute__', ('parties',))

    @property
    def n_waiting(self):
        return self._callmethod('__getattribute__', ('n_waiting',))

    @property
    def broken(self):
        return self._callmethod('__getattribute__', ('broken',))


class NamespaceProxy(BaseProxy):
    _exposed_ = ('__getattribute__', '__setattr__', '__delattr__')

    def __getattr__(self, key):
        if key[0] == '_':
            return object.__getattribute__(self, key)
        return self._callmethod('__getattribute__', (key,))

    def __setattr__(self, key, value):
        if key[0] == '_':
            return object.__setattr__(self, key, value)
        return self._callmethod('__setattr__', (key, value))

    def __delattr__(self, key):
        if key[0] == '_':
            return object.__delattr__(self, key)
        return self._callmethod('__delattr__', (key,))


class ValueProxy(BaseProxy):
    _exposed_ = ('get', 'set')
    get = _cmp.ProxyMethod('get')

    def set(self, value):
        return self._callmethod('set', (value,))

    value = property(get, set)
    __class_getitem__ = classmethod(types.GenericAlias)


BaseListProxy = MakeProxyType('BaseListProxy', (
    '__add__', '__contains__', '__delitem__', '__getitem__', '__len__',
    '__mul__', '__reversed__', '__rmul__', '__setitem__',
    'append', 'clear', 'copy', 'count', 'extend', 'index', 'insert', 'pop',
    'remove', 'reverse', 'sort', '__imul__'))


class ListProxy(BaseListProxy):
    def __iadd__(self, value):
        self._callmethod('extend', (value,))
        return self

    def __imul__(self, value):
        self._callmethod('__imul__', (value,))
        return self

    __class_getitem__ = classmethod(types.GenericAlias)


_BaseDictProxy = MakeProxyType('DictProxy', (
    '__contains__', '__delitem__', '__getitem__', '__ior__', '__iter__', '__len__',
    '__or__', '__reversed__', '__ror__', '__setitem__', 'clear', 'copy', 'fromkeys',
    'get', 'items', 'keys', 'pop', 'popitem', 'setdefault', 'update', 'values'))
_BaseDictProxy._method_to_typeid_ = {'__iter__': 'Iterator'}


class DictProxy(_BaseDictProxy):
    def __ior__(self, value):
        self._callmethod('__ior__', (value,))
        return self

    __class_getitem__ = classmethod(types.GenericAlias)


_BaseSetProxy = MakeProxyType('_BaseSetProxy', (
    '__and__', '__class_getitem__', '__contains__', '__iand__', '__ior__', '__isub__',
    '__iter__', '__ixor__', '__len__', '__or__', '__rand__', '__ror__', '__rsub__',
    '__rxor__', '__sub__', '__xor__', '__ge__', '__gt__', '__le__', '__lt__',
    'add', 'clear', 'copy', 'difference', 'difference_update', 'discard',
    'intersection', 'intersection_update', 'isdisjoint', 'issubset', 'issuperset',
    'pop', 'remove', 'symmetric_difference', 'symmetric_difference_update',
    'union', 'update'))
_BaseSetProxy._method_to_typeid_ = {'__iter__': 'Iterator'}


class SetProxy(_BaseSetProxy):
    def __ior__(self, value):
        self._callmethod('__ior__', (value,))
        return self

    def __iand__(self, value):
        self._callmethod('__iand__', (value,))
        return self

    def __ixor__(self, value):
        self._callmethod('__ixor__', (value,))
        return self

    def __isub__(self, value):
        self._callmethod('__isub__', (value,))
        return self

    __class_getitem__ = classmethod(types.GenericAlias)


ArrayProxy = MakeProxyType('ArrayProxy', ('__len__', '__getitem__', '__setitem__'))

BasePoolProxy = MakeProxyType('PoolProxy', (
    'apply', 'apply_async', 'close', 'imap', 'imap_unordered', 'join',
    'map', 'map_async', 'starmap', 'starmap_async', 'terminate'))
BasePoolProxy._method_to_typeid_ = {
    'apply_async': 'AsyncResult',
    'map_async': 'AsyncResult',
    'starmap_async': 'AsyncResult',
    'imap': 'Iterator',
    'imap_unordered': 'Iterator',
}


class PoolProxy(BasePoolProxy):
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


def _pool(*args, **kwds):
    from .pool import Pool
    return Pool(*args, **kwds)


class SyncManager(BaseManager):
    """A manager of the threading and queue objects, list, dict, set,
    Namespace, Value and Array, and Pool (what Manager() returns started)."""


SyncManager.register('Queue', queue.Queue)
SyncManager.register('JoinableQueue', queue.Queue)
SyncManager.register('Event', threading.Event, EventProxy)
SyncManager.register('Lock', threading.Lock, AcquirerProxy)
SyncManager.register('RLock', threading.RLock, AcquirerProxy)
SyncManager.register('Semaphore', threading.Semaphore, AcquirerProxy)
SyncManager.register('BoundedSemaphore', threading.BoundedSemaphore, AcquirerProxy)
SyncManager.register('Condition', threading.Condition, ConditionProxy)
SyncManager.register('Barrier', threading.Barrier, BarrierProxy)
SyncManager.register('Pool', _pool, PoolProxy)
SyncManager.register('list', list, ListProxy)
SyncManager.register('dict', dict, DictProxy)
SyncManager.register('set', set, SetProxy)
SyncManager.register('Value', Value, ValueProxy)
SyncManager.register('Array', Array, ArrayProxy)
SyncManager.register('Namespace', Namespace, NamespaceProxy)
SyncManager.register('Iterator', proxytype=IteratorProxy, create_method=False)
SyncManager.register('AsyncResult', create_method=False)


def Manager(ctx=None):
    """A started SyncManager (multiprocessing.Manager)."""
    m = SyncManager(ctx=ctx)
    m.start()
    return m


# ---- SharedMemoryManager ---------------------------------------------------

class SharedMemoryServer(Server):
    """A manager's server that also keeps the names of the segments its
    clients made through it, and unlinks them when it shuts down."""

    public = Server.public + ['track_segment', 'release_segment', 'list_segments',
                              'unlink_segments']

    def __init__(self, *args, **kwargs):
        Server.__init__(self, *args, **kwargs)
        self.segment_names = []

    def _destroy(self, name):
        from .shared_memory import SharedMemory
        self.segment_names.remove(name)
        try:
            # untracked: the unlink here is the whole point
            SharedMemory(name, track=False).unlink()
        except FileNotFoundError:
            pass  # its client unlinked it already

    def shutdown(self, c):
        self.unlink_segments(c)
        return Server.shutdown(self, c)

    def unlink_segments(self, c):
        for name in list(self.segment_names):
            self._destroy(name)

    def track_segment(self, c, segment_name):
        self.segment_names.append(segment_name)

    def release_segment(self, c, segment_name):
        self._destroy(segment_name)

    def list_segments(self, c):
        return self.segment_names


def _finalize_shared_memory_manager(address, authkey, serializer, *args):
    try:
        _channel(address, authkey, serializer).request(None, 'unlink_segments', (), {})
    except Exception:
        pass  # its server is gone: the segments' own trackers remain
    _finalize_manager(*args)


class SharedMemoryManager(BaseManager):
    """A manager whose SharedMemory() and ShareableList() create segments
    that are unlinked when the manager shuts down (the standard library's
    behaviour, on cmultiprocessing's server and shared_memory)."""

    _Server = SharedMemoryServer
    _server_word, _manager_word = "SharedMemoryServer", "SharedMemoryManager"

    def __init__(self, *args, **kwargs):
        from . import resource_tracker
        resource_tracker.ensure_running()
        BaseManager.__init__(self, *args, **kwargs)

    def start(self, initializer=None, initargs=()):
        BaseManager.start(self, initializer, initargs)
        # Our owner stops its server through a control socket, not with a
        # 'shutdown' request: ask for the unlinks first.
        base = self.shutdown
        args = tuple(base._args)
        base.cancel()
        self.shutdown = util.Finalize(
            self, _finalize_shared_memory_manager,
            args=(self._address, self._authkey, self._serializer) + args, exitpriority=0)

    def _tracked(self, segment, shm):
        try:
            self._call_server('track_segment', shm.name)
        except BaseException:
            shm.unlink()
            raise
        return segment

    def _check_serving(self):
        # before a segment is made: the stdlib's fails connecting first
        if self._address is None:
            raise ValueError("the SharedMemoryManager's server is not started: "
                             "start() it or use it in a with block")

    def SharedMemory(self, size):
        """A new SharedMemory of size bytes, unlinked at shutdown."""
        from .shared_memory import SharedMemory
        self._check_serving()
        shm = SharedMemory(None, create=True, size=size)
        return self._tracked(shm, shm)

    def ShareableList(self, sequence):
        """A new ShareableList of sequence, unlinked at shutdown."""
        from .shared_memory import ShareableList
        self._check_serving()
        sl = ShareableList(sequence)
        return self._tracked(sl, sl.shm)


import time  # noqa: E402  (ConditionProxy.wait_for)
del array
