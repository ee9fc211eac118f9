"""moto's server (`moto_server`), with two fixes to DynamoDB.

1. TransactWriteItems.

To roll a cancelled transaction back, moto 5 deep-copies the table once per *action* of the
transaction, although every copy is taken before any action runs, so all but the last are
thrown away. moto also registers every copied item in its instance tracker, so they are never
freed. Measured on this machine (moto 5.2.5): on a 2,000-item table, one 99-action transaction
took 10 s and grew the server by 250 MB; tally's DynamoDB tests drove it past 16 GB.

Here the copies taken during one TransactWriteItems call are memoised per object, so each table
is copied once per transaction, and DynamoDB's model objects are not registered in the tracker
(it only feeds moto's `/moto-api` dashboard, which the tests do not use). The snapshot is the
same one moto would roll back to, so what the server answers is unchanged; only the time and
memory differ (the same transactions: 0.15 s each, the server about flat).

2. Number arithmetic. moto adds Numbers (`ADD`) with Python's Decimal and stores `str()` of the
sum, which for small results is exponent notation (0.0000012 + -0.0000008 = "4E-7"); the next
`ADD` on that attribute then fails with "invalid literal for int()", because moto takes a
number without a "." for an integer. DynamoDB itself accepts and adds such numbers. Sums are
stored here in plain notation ("0.0000004"), the same value.

3. Serialised DynamoDB requests. moto's server is threaded and its DynamoDB backend has no
lock, so two requests on the same items can interleave: a condition checked by one while the
other writes, a rolled-back transaction restoring a table copy over another's writes. DynamoDB
applies each request (and each transaction) atomically. A test that SIGKILLs a writer and
restarts it meets this at once: the dead writer's last transaction is still running in moto
while the new process reads and writes the same items. Here DynamoDB requests take one lock,
so each is applied whole, as on DynamoDB; S3 and CloudWatch Logs requests stay concurrent.

Usage is `moto_server`'s:
    python tests/moto_server.py -H 127.0.0.1 -p PORT
"""
import copy
import sys
from decimal import Decimal
import threading
import types

import moto.dynamodb.models as dynamodb_models
from moto.core.common_models import BaseModel
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_active = threading.local()


def _deepcopy(obj, *args, **kwargs):
    memo = getattr(_active, "memo", None)
    if memo is None:
        return copy.deepcopy(obj, *args, **kwargs)
    # Keep the original alive with its copy, so its id cannot be reused within the call.
    hit = memo.get(id(obj))
    if hit is None or hit[0] is not obj:
        hit = memo[id(obj)] = (obj, copy.deepcopy(obj, *args, **kwargs))
    return hit[1]


_transact = dynamodb_models.DynamoDBBackend.transact_write_items


def _transact_write_items(self, transact_items):
    _active.memo = {}
    try:
        return _transact(self, transact_items)
    finally:
        _active.memo = None


if not hasattr(dynamodb_models, "copy") or not hasattr(dynamodb_models.DynamoDBBackend, "transact_write_items"):
    sys.exit("tests/moto_server.py: this moto version is laid out differently; update the patch")
dynamodb_models.copy = types.SimpleNamespace(deepcopy=_deepcopy)
dynamodb_models.DynamoDBBackend.transact_write_items = _transact_write_items


def _plain(op):
    def arithmetic(self, other):
        out = op(self, other)
        if out.is_number() and ("E" in out.value or "e" in out.value):
            out.value = format(Decimal(out.value), "f")
        return out

    return arithmetic


DynamoType.__add__ = _plain(DynamoType.__add__)
DynamoType.__sub__ = _plain(DynamoType.__sub__)


_dynamodb_lock = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialised_call_action(self):
    with _dynamodb_lock:
        return _call_action(self)


DynamoHandler.call_action = _serialised_call_action


class _Untracked(list):
    def append(self, _item):
        pass


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


for _cls in _subclasses(BaseModel):
    if _cls.__module__.startswith("moto.dynamodb.") and "instances_tracked" in vars(_cls):
        _cls.instances_tracked = _Untracked()

if __name__ == "__main__":
    main()
