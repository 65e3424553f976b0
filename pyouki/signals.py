"""Signal names and numbers without importing the `signal` module (3 ms on every kill), nor
pyouki.errors but to refuse one."""

SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8,
    "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16,
    "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24,
    "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}
SIGRTMIN, SIGRTMAX = 34, 64


def parse_signal(text: str) -> int:
    """A signal given as a number, a name, or a name with SIG (TERM, SIGTERM, 15, RTMIN+3)."""
    value = text.strip().upper()
    if value.isdigit():
        number = int(value)
        if 0 <= number <= SIGRTMAX:  # 0 like runc: kill(2)'s existence check
            return number
        raise _invalid(text)
    if value.startswith("SIG"):
        value = value[3:]
    if value in SIGNALS:
        return SIGNALS[value]
    for base, sign, number in (("RTMIN+", 1, SIGRTMIN), ("RTMAX-", -1, SIGRTMAX)):
        if value.startswith(base) and value[len(base):].isdigit():
            result = number + sign * int(value[len(base):])
            if SIGRTMIN <= result <= SIGRTMAX:
                return result
    if value == "RTMIN":
        return SIGRTMIN
    if value == "RTMAX":
        return SIGRTMAX
    raise _invalid(text)


def _invalid(text: str) -> Exception:
    from pyouki.errors import PyoukiError

    return PyoukiError(f"invalid signal {text!r}")
