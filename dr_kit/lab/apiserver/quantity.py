"""Resource quantities (``64Mi``, ``1.5``, ``100M``, ``1e3``) in their canonical form.

A real API server decodes every quantity field of a built-in kind and stores it in
canonical form: the format of the input is kept (binary ``Ki``/``Mi``/..., decimal
``k``/``M``/... or an exponent), the number is written with the largest suffix that keeps
it an integer, and a number sent as JSON becomes a string. So ``64Mi`` stays ``64Mi``,
``1024Mi`` becomes ``1Gi``, ``0.5Gi`` becomes ``512Mi``, ``1000`` becomes ``1k``, ``1.5``
becomes ``1500m`` and ``67108864`` stays ``67108864``.

:func:`format_bytes` is what a storage provisioner writes for a volume's capacity: a byte
count as a binary quantity (``67108864`` -> ``64Mi``).
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

PATTERN = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)\Z")
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)\Z")
_EXPONENT = re.compile(r"^[eE][-+]?[0-9]+\Z")
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
            "E": 18}
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BINARY_SUFFIX = {0: "", **{v: k for k, v in _BINARY.items()}}
_CONTEXT = decimal.Context(prec=200, Emax=10_000, Emin=-10_000)


class InvalidQuantity(ValueError):
    """Not a quantity (the message is the real API server's)."""


def parse(text: str) -> tuple[Decimal, str]:
    """``(value, format)`` with format ``"BinarySI"``, ``"DecimalSI"`` or ``"DecimalExponent"``."""
    text = text.strip()
    m = PATTERN.match(text)
    if not m or len(text) > 100:
        raise InvalidQuantity(
            "quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    number, suffix = m.group(1), m.group(2)
    if not _NUMBER.match(number):
        raise InvalidQuantity("unable to parse quantity's number")
    value = Decimal(number, context=_CONTEXT)
    if suffix in _DECIMAL:
        return value.scaleb(_DECIMAL[suffix], context=_CONTEXT), "DecimalSI"
    if suffix in _BINARY:
        return _CONTEXT.multiply(value, Decimal(1024) ** _BINARY[suffix]), "BinarySI"
    if _EXPONENT.match(suffix) and len(suffix) <= 6:
        return value.scaleb(int(suffix[1:]), context=_CONTEXT), "DecimalExponent"
    raise InvalidQuantity("unable to parse quantity's suffix")


def _decimal_parts(value: Decimal) -> tuple[int, int]:
    """``value = amount * 10**exponent`` with exponent a multiple of 3, amount integral."""
    sign, digits, exponent = value.normalize(_CONTEXT).as_tuple()
    assert isinstance(exponent, int)
    amount = int("".join(map(str, digits)) or "0")
    shift = exponent % 3  # floor to a multiple of 3
    amount *= 10**shift
    exponent -= shift
    return (-amount if sign else amount), exponent


def canonical(text: str | int | float) -> str:
    """The canonical string of a quantity (raises :class:`InvalidQuantity`)."""
    value, fmt = parse(repr(text) if isinstance(text, float) else str(text))
    if value.is_zero():
        return "0"
    nano = value.scaleb(9, context=_CONTEXT)
    if nano != nano.to_integral_value(rounding=decimal.ROUND_UP):  # below 1n: round up
        value = nano.to_integral_value(rounding=decimal.ROUND_UP).scaleb(-9, context=_CONTEXT)
    if fmt == "BinarySI" and (abs(value) < 1024 or value != value.to_integral_value()):
        fmt = "DecimalSI"
    if fmt == "BinarySI":
        amount, exponent = int(value), 0
        while amount % 1024 == 0 and exponent < 6:
            amount //= 1024
            exponent += 1
        return f"{amount}{_BINARY_SUFFIX[exponent]}"
    amount, exponent = _decimal_parts(value)
    if fmt == "DecimalExponent":
        return f"{amount}e{exponent}" if exponent else str(amount)
    if exponent in _DECIMAL_SUFFIX:
        return f"{amount}{_DECIMAL_SUFFIX[exponent]}"
    return f"{amount}e{exponent}"


def format_bytes(size: int) -> str:
    """A byte count as a provisioner writes it: a binary quantity (``64Mi``, ``1536``)."""
    return canonical(f"{size // 1024}Ki") if size and size % 1024 == 0 else str(size)
