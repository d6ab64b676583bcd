#!/usr/bin/env python3
"""Domain generation algorithms (DGAs) of real malware families.

This is the positive class of the training data for Guard's DGA model. Each
family below re-implements the algorithm that public malware analyses
describe (the reference for each is named next to it). Where the published
description fixes every step, the generator is exact; where part of it could
not be reproduced (a word list shipped inside the malware, say), the
generator keeps the published structure -- alphabet, length range, TLDs,
seeding -- and says which part differs.

Usage:

    dga.py --start 2024-01-01 --days N --per-day M --words WORDFILE

prints `domain<TAB>family` lines. The output is a function of the arguments
and of the word file's contents only: nothing reads the clock or a random
source.

How days map onto the algorithms:

* Date-seeded families give, for each day, the domains the malware would
  generate on that day. Several of them re-seed only every few days (necurs
  every 4 days of the month, locky every 2, pykspa every 2, qakbot every 10);
  on the k-th day (from 0) of such a period they give sequence numbers
  k*M .. k*M+M-1 of that period's sequence, so that each day adds M new
  domains of the family while staying within what the algorithm produces.
* Families whose sequence does not depend on the date (banjori, kraken,
  ramnit, simda, tinba) continue their sequence, M domains a day.

Every emitted domain is lowercase, has at least two labels, and each label
is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'.
A domain produced twice (by two families, or twice by one) is printed once,
with the family that produced it first.
"""

from __future__ import annotations

import argparse
import binascii
import datetime as dt
import hashlib
import re
import struct
import sys
from collections.abc import Callable, Iterator

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
EPOCH = dt.date(1970, 1, 1)
MONTH_ABBREVIATIONS = (
    "jan", "feb", "mar", "apr", "may", "jun",
    "jul", "aug", "sep", "oct", "nov", "dec",
)
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class Options:
    """The command-line arguments every family reads."""

    def __init__(self, start: dt.date, days: int, per_day: int, words: list[str]):
        self.start = start
        self.days = days
        self.per_day = per_day
        self.words = words

    def dates(self) -> Iterator[dt.date]:
        for offset in range(self.days):
            yield self.start + dt.timedelta(days=offset)


# ---------------------------------------------------------------------------
# Shared helpers


def rol32(value: int, bits: int) -> int:
    value &= MASK32
    return ((value << bits) | (value >> (32 - bits))) & MASK32


def ror32(value: int, bits: int) -> int:
    value &= MASK32
    return ((value >> bits) | (value << (32 - bits))) & MASK32


def int32(value: int) -> int:
    """Wraps an integer to a signed 32-bit value, as C's `int` would."""
    value &= MASK32
    return value - (1 << 32) if value & 0x80000000 else value


def div_toward_zero(numerator: int, denominator: int) -> int:
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


def epoch_seconds(date: dt.date) -> int:
    """Seconds since 1970-01-01 00:00 UTC at the start of `date`."""
    return (date - EPOCH).days * 86400


def day_in_period(date: dt.date, period_of: Callable[[dt.date], object]) -> int:
    """How many days before `date` share its seeding period (0 on the first)."""
    period = period_of(date)
    earlier = date - dt.timedelta(days=1)
    index = 0
    while period_of(earlier) == period:
        index += 1
        earlier -= dt.timedelta(days=1)
    return index


def take(sequence: Iterator[str], count: int) -> list[str]:
    out = []
    for _ in range(count):
        out.append(next(sequence))
    return out


def round_robin(streams: list[Iterator[str]], options: Options) -> Iterator[str]:
    """M domains a day from sequences that do not depend on the date,
    taken in turn from each of `streams`."""
    for _ in range(options.days):
        for i in range(options.per_day):
            yield next(streams[i % len(streams)])


def pick_words(words: list[str], tag: str, count: int,
               min_len: int, max_len: int, skip: set[str] | None = None) -> list[str]:
    """A reproducible selection of `count` words from the word file: words in
    the length range, ordered by a hash of `tag` and the word. The selection
    depends only on the set of words, not on the file's order."""
    skip = skip or set()
    eligible = sorted({w for w in words if min_len <= len(w) <= max_len and w not in skip})
    if len(eligible) < count:
        raise SystemExit(
            f"dga.py: the word file has {len(eligible)} words of {min_len}-{max_len} "
            f"letters; {tag} needs {count}"
        )
    eligible.sort(key=lambda w: hashlib.sha256(f"{tag}:{w}".encode()).digest())
    return eligible[:count]


# ---------------------------------------------------------------------------
# Banjori (MultiBanker 2, BankPatch). Exact.
# Reference: J. Bader, "The DGA of Banjori" (2015). Each domain is derived
# from the previous one by rewriting only its first four letters, each a sum
# of neighbouring letters folded back into a-z; the rest of the hard-coded
# seed domain is kept, so all domains share its long tail.

BANJORI_SEED = "earnestnessbiophysicalohax.com"


def banjori_sequence(seed: str) -> Iterator[str]:
    def fold(code: int) -> int:
        return ord("a") + (code - ord("a")) % 26

    domain = seed
    while True:
        yield domain
        c = [ord(ch) for ch in domain]
        c[0] = fold(c[0] + c[3])
        c[1] = fold(c[0] + 2 * c[1])
        c[2] = fold(c[0] + c[2] - 1)
        c[3] = fold(c[1] + c[2] + c[3])
        domain = "".join(chr(x) for x in c)


def banjori(options: Options) -> Iterator[str]:
    return round_robin([banjori_sequence(BANJORI_SEED)], options)


# ---------------------------------------------------------------------------
# Corebot. Exact.
# Reference: J. Bader, "The DGA of Corebot" (2015). A linear congruential
# generator (Numerical Recipes constants) seeded from a sample constant plus
# year, month and day picks a length of 12-23 and then characters from a-y
# and 0-8; every name sits under the ddns.net dynamic-DNS zone.

COREBOT_SEED = 0x1DBA8930
COREBOT_CHARSET = ALPHABET[:25] + "012345678"


def corebot(options: Options) -> Iterator[str]:
    for date in options.dates():
        r = (COREBOT_SEED + date.year + (((1 << 16) + (date.month << 8)) | date.day)) & MASK32
        for _ in range(options.per_day):
            r = (1664525 * r + 1013904223) & MASK32
            length = 12 + r % 12
            label = []
            for _ in range(length):
                r = (1664525 * r + 1013904223) & MASK32
                label.append(COREBOT_CHARSET[r % len(COREBOT_CHARSET)])
            yield "".join(label) + ".ddns.net"


# ---------------------------------------------------------------------------
# CryptoLocker. Exact.
# Reference: Fortinet, "A Closer Look at Cryptolocker's DGA" (2014). Day,
# month and year (the year advanced by the domain's index) are each scaled
# by 65537 and stepped through their own shift/xor recurrence; the three are
# xored into one letter a-y per step, 12-15 letters, and the TLD cycles
# through seven.

CRYPTOLOCKER_TLDS = ("com", "net", "biz", "ru", "org", "co.uk", "info")


def cryptolocker_domain(date: dt.date, index: int) -> str:
    d = date.day * 65537
    m = date.month * 65537
    y = (date.year + index) * 65537
    length = (((d >> 3) ^ (y >> 8) ^ (y >> 11)) & 3) + 12
    label = []
    for _ in range(length):
        d = (((d << 13) & MASK32) >> 19) ^ (((d >> 1) << 13) & MASK32) ^ (d >> 19)
        m = (((m << 2) & MASK32) >> 25) ^ (((m >> 3) << 7) & MASK32) ^ (m >> 25)
        y = (((y << 3) & MASK32) >> 11) ^ (((y >> 4) << 21) & MASK32) ^ (y >> 11)
        label.append(ALPHABET[(d ^ m ^ y) % 25])
    return "".join(label) + "." + CRYPTOLOCKER_TLDS[index % len(CRYPTOLOCKER_TLDS)]


def cryptolocker(options: Options) -> Iterator[str]:
    for date in options.dates():
        for index in range(options.per_day):
            yield cryptolocker_domain(date, index)


# ---------------------------------------------------------------------------
# Gameover Zeus ("newGOZ", the peer-to-peer Zeus successor). Exact.
# Reference: J. Bader, "The DGA of newGOZ" (2014). MD5 over the sequence
# number and the date, interleaved with a 4-byte key; each of the digest's
# four little-endian 32-bit words is written in base 36 (at most 7 digits);
# the TLD follows from the sequence number.

GAMEOVER_KEY = bytes((0x01, 0x05, 0x19, 0x35))


def gameover_domain(date: dt.date, seq: int) -> str:
    material = (
        struct.pack("<I", seq)
        + struct.pack("<H", date.year) + GAMEOVER_KEY
        + struct.pack("<H", date.month) + GAMEOVER_KEY
        + struct.pack("<H", date.day) + GAMEOVER_KEY
    )
    digest = hashlib.md5(material).digest()
    label = ""
    for offset in range(0, 16, 4):
        value = int.from_bytes(digest[offset:offset + 4], "little")
        digits = []
        for _ in range(7):
            digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[value % 36])
            value //= 36
            if value == 0:
                break
        label += "".join(reversed(digits))
    if seq % 4 == 0:
        tld = "com"
    elif seq % 3 == 0:
        tld = "org"
    elif seq % 2 == 0:
        tld = "biz"
    else:
        tld = "net"
    return f"{label}.{tld}"


def gameover(options: Options) -> Iterator[str]:
    for date in options.dates():
        for seq in range(options.per_day):
            yield gameover_domain(date, seq)


# ---------------------------------------------------------------------------
# Kraken (Bobax, Oderoor), first DGA. Exact.
# Reference: J. Bader, "Kraken's two Domain Generation Algorithms" (2015).
# A cubic polynomial of the domain number plus one of two seed constants
# (one for each of the sample's two modes) seeds the C runtime's rand()
# (an LCG); three draws fix a length of 6-11, further draws the letters. The
# names sit under four dynamic-DNS zones chosen by the domain number. The
# sequence does not depend on the date. Both published seed sets are used.

KRAKEN_ZONES = ("dyndns.org", "yi.org", "dynserv.com", "mooo.com")
KRAKEN_SEEDS = {
    "a": {"temp": -0x0FCFBF88, "no_temp": 0x8924541},
    "b": {"temp": -0x1FCFBF87, "no_temp": 0x7924542},
}


def kraken_domain(number: int, seed_set: str, temp_file: bool) -> str:
    def rand(state: int) -> int:
        return int32(1103515245 * state + 12435)

    def crop(state: int) -> int:
        return (state // 256) % 32768

    n = number + 1000015
    if temp_file:
        x = div_toward_zero(int32(n * (n + 7) * (n + 12)), 9)
        y = n * (n + 1)
        r = int32(x + y + KRAKEN_SEEDS[seed_set]["temp"])
    else:
        x = div_toward_zero(int32((n + 2) * (n + 7) * n), 9)
        y = (n * 3 + 1) * n
        r = int32(x + y + KRAKEN_SEEDS[seed_set]["no_temp"])
    draws = []
    for _ in range(3):
        r = rand(r)
        draws.append(crop(r))
    length = (draws[0] * draws[1] - draws[2]) % 6 + 6
    label = []
    for _ in range(length):
        r = rand(r)
        label.append(ALPHABET[crop(r) % 26])
    return "".join(label) + "." + KRAKEN_ZONES[n % 4]


def kraken_sequence() -> Iterator[str]:
    number = 0
    while True:
        for seed_set in ("a", "b"):
            for temp_file in (True, False):
                yield kraken_domain(number, seed_set, temp_file)
        number += 1


def kraken(options: Options) -> Iterator[str]:
    return round_robin([kraken_sequence()], options)


# ---------------------------------------------------------------------------
# Locky, second DGA. Exact.
# Reference: Forcepoint, "Locky's New DGA - Seeding New Domains" (2016), with
# the sample configuration (seed 7077, rotation 7) J. Bader published. Seven
# rounds of multiply (0xB11924E1), rotate and add mix the year, half the
# day of the month, the month, the sample seed and the domain number; the
# result gives a length of 7-17, one letter a-y per round, and one of ten
# TLDs. The seed changes every second day.

LOCKY_SEED = 7077
LOCKY_SHIFT = 7
LOCKY_TLDS = ("ru", "info", "biz", "click", "su", "work", "pl", "org", "pw", "xyz")
LOCKY_MUL = 0xB11924E1
LOCKY_ADD = 0x27100001


def locky_domain(date: dt.date, number: int) -> str:
    def mix(value: int) -> int:
        return ror32(LOCKY_MUL * value, LOCKY_SHIFT)

    seed_rot = rol32(LOCKY_SEED, 17)
    number_rot = rol32(number, 21)
    k = 0
    year = date.year
    for _ in range(7):
        t0 = mix(year + k + 0x1BF5)
        t1 = ((t0 + LOCKY_ADD) ^ k) & MASK32
        t2 = mix(t1 + LOCKY_SEED)
        t3 = ((t2 + LOCKY_ADD) ^ t1) & MASK32
        t4 = mix(date.day // 2 + t3)
        t5 = (0xD8EFFFFF - t4 + t3) & MASK32
        t6 = mix(date.month + t5 - 0x65CAD)
        t7 = (t5 + t6 + LOCKY_ADD) & MASK32
        t8 = mix(t7 + seed_rot + number_rot)
        k = ((t8 + LOCKY_ADD) ^ t7) & MASK32
        year += 1
    length = k % 11 + 7
    label = []
    for i in range(length):
        k = (mix(rol32(k, i)) + LOCKY_ADD) & MASK32
        label.append(ALPHABET[k % 25])
    k = mix(k)
    return "".join(label) + "." + LOCKY_TLDS[(k + LOCKY_ADD) % len(LOCKY_TLDS)]


def locky(options: Options) -> Iterator[str]:
    def period(date: dt.date) -> tuple[int, int, int]:
        return (date.year, date.month, date.day // 2)

    for date in options.dates():
        first = day_in_period(date, period) * options.per_day
        for number in range(first, first + options.per_day):
            yield locky_domain(date, number)


# ---------------------------------------------------------------------------
# Matsnu. Structural: the algorithm is the published one, the dictionaries
# are not.
# Reference: Check Point, "Matsnu" MalwareID technical brief (2015). A 16-bit
# state is multiplied by two constants, the days since 1970 and the domain
# number, then xored with a constant; each state picks a word, alternately
# from a list of verbs and a list of nouns, until the name is longer than 12
# characters; an odd state puts a hyphen after the word; TLD .com. Matsnu
# ships its own verb and noun lists; here two disjoint lists of 1,500 words
# are drawn from the word file instead. The malware makes 10 names a day
# (and retries those of the previous two days); here each day gives M.

MATSNU_C1 = 0xEF5EB
MATSNU_C2 = 0x39339


class MatsnuDay:
    """The names of one day: the 16-bit state starts at 1 each day and runs
    on from one name to the next."""

    def __init__(self, date: dt.date, first_list: list[str], second_list: list[str]):
        self.days = (date - EPOCH).days
        self.lists = (first_list, second_list)
        self.state = 1
        self.number = 1

    def _word(self, words: list[str]) -> str:
        s = self.state & 0xFFFF
        s = (s * MATSNU_C1) & 0xFFFF
        s = (s * self.days) & 0xFFFF
        s = (s * MATSNU_C2) & 0xFFFF
        s = (s * self.number) & 0xFFFF
        self.state = (s ^ MATSNU_C1) & 0xFFFF
        return words[self.state % len(words)]

    def next_domain(self) -> str:
        label = ""
        turn = 0
        while len(label) <= 12:
            label += self._word(self.lists[turn])
            turn ^= 1
            if self.state & 1:
                label += "-"
        self.number += 1
        return label.rstrip("-") + ".com"


def matsnu(options: Options) -> Iterator[str]:
    verbs = pick_words(options.words, "matsnu-verbs", 1500, 3, 9)
    nouns = pick_words(options.words, "matsnu-nouns", 1500, 3, 9, skip=set(verbs))
    for date in options.dates():
        day = MatsnuDay(date, verbs, nouns)
        for _ in range(options.per_day):
            yield day.next_domain()


# ---------------------------------------------------------------------------
# Necurs. Exact.
# Reference: J. Bader, "The DGAs of Necurs" (2015). A 64-bit mixing function
# (a data-dependent 21-148 rounds of multiply, shift and add) is chained over
# year, month, a quarter of the day of the month, the sequence number and a
# per-sample magic number (9 here); its outputs give a length of 7-21, the
# letters a-y and one of 43 TLDs. 2048 names per 4-day period.

NECURS_MAGIC = 9
NECURS_TLDS = (
    "tj", "in", "jp", "tw", "ac", "cm", "la", "mn", "so", "sh", "sc", "nu",
    "nf", "mu", "ms", "mx", "ki", "im", "cx", "cc", "tv", "bz", "me", "eu",
    "de", "ru", "co", "su", "pw", "kz", "sx", "us", "ug", "ir", "to", "ga",
    "com", "net", "org", "biz", "xxx", "pro", "bit",
)


def necurs_mix(value: int) -> int:
    for i in range((value & 0x7F) + 21):
        value = (value + (((value * 7) ^ (value << 15)) + 8 * i - (value >> 5))) & MASK64
    return value


def necurs_domain(date: dt.date, seq: int) -> str:
    n = necurs_mix(date.year)
    n = necurs_mix(n + date.month + 43690)
    n = necurs_mix(n + (date.day >> 2))
    n = necurs_mix(n + seq)
    n = necurs_mix(n + NECURS_MAGIC)
    length = n % 15 + 7
    label = []
    for i in range(length):
        n = necurs_mix(n + i)
        label.append(ALPHABET[n % 25])
        n = necurs_mix(n + 0xABBEDF)
    return "".join(label) + "." + NECURS_TLDS[n % len(NECURS_TLDS)]


def necurs(options: Options) -> Iterator[str]:
    def period(date: dt.date) -> tuple[int, int, int]:
        return (date.year, date.month, date.day >> 2)

    for date in options.dates():
        first = day_in_period(date, period) * options.per_day
        for seq in range(first, first + options.per_day):
            yield necurs_domain(date, seq)


# ---------------------------------------------------------------------------
# Pykspa, the earlier ("precursor") DGA. Exact, in UTC.
# Reference: J. Bader, "Pykspa's inferior DGA version" (2015). The seed is
# the Unix time divided by two days; each domain squares the state, adds the
# domain number, and derives a length of 6-15 and the letters from modular
# arithmetic on the state; six TLDs. The malware takes the time in the
# machine's local zone; here it is taken in UTC.

PYKSPA_TLDS = ("biz", "com", "net", "org", "info", "cc")


def pykspa_label(length: int, r: int) -> str:
    a = length * length
    label = []
    for i in range(length):
        x = (i * (r % 4567 + r % 19)) & MASK32
        y = r % 123456
        z = r % 5
        p = (r * (z + y + x)) & MASK32
        label.append(ALPHABET[((a + p) & MASK32) % 26])
        r = (r + i) & MASK32
        r >>= (i * i) & 0xFF & 31
        a = (a + length) & MASK32
    return "".join(label)


def pykspa_sequence(seed: int) -> Iterator[str]:
    r = seed
    number = 0
    while True:
        r = (r * r) & MASK32
        r = (r + number) & MASK32
        length = r % 10 + 6
        yield pykspa_label(length, r) + "." + PYKSPA_TLDS[r % 6]
        number += 1


def pykspa(options: Options) -> Iterator[str]:
    def period(date: dt.date) -> int:
        return epoch_seconds(date) // (2 * 86400)

    for date in options.dates():
        first = day_in_period(date, period) * options.per_day
        sequence = pykspa_sequence(period(date))
        take(sequence, first)
        yield from take(sequence, options.per_day)


# ---------------------------------------------------------------------------
# Qakbot (Qbot). Exact.
# Reference: J. Bader, "The DGA of Qakbot" (2016). The CRC-32 of the text
# "<period>.<month>.<year>.<seed>" (period = day of month in thirds: 1-10,
# 11-20, 21-31) seeds a Mersenne Twister (MT19937); each domain draws a TLD,
# a length of 8-25 and letters a-z. The seed changes three times a month.


class MersenneTwister:
    """MT19937 seeded with one 32-bit word (the reference initialisation)."""

    def __init__(self, seed: int):
        self.state = [seed & MASK32]
        for i in range(1, 624):
            prev = self.state[-1]
            self.state.append((1812433253 * (prev ^ (prev >> 30)) + i) & MASK32)
        self.index = 624

    def _regenerate(self) -> None:
        s = self.state
        for i in range(624):
            y = (s[i] & 0x80000000) | (s[(i + 1) % 624] & 0x7FFFFFFF)
            s[i] = s[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.index = 0

    def next_u32(self) -> int:
        if self.index >= 624:
            self._regenerate()
        y = self.state[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y & MASK32

    def between(self, low: int, high: int) -> int:
        """An integer in low..=high from the top 28 bits' fraction, as Qakbot
        scales it."""
        return low + ((self.next_u32() & 0xFFFFFFF) * (high - low + 1) >> 28)


QAKBOT_TLDS = ("com", "net", "org", "info", "biz", "org")


def qakbot_period(date: dt.date) -> tuple[int, int, int]:
    return (min((date.day - 1) // 10, 2), date.month, date.year)


def qakbot_sequence(date: dt.date) -> Iterator[str]:
    third, month, year = qakbot_period(date)
    text = f"{third}.{MONTH_ABBREVIATIONS[month - 1]}.{year}.{0:08x}"
    twister = MersenneTwister(binascii.crc32(text.encode("ascii")))
    while True:
        tld = QAKBOT_TLDS[twister.between(0, len(QAKBOT_TLDS) - 1)]
        length = twister.between(8, 25)
        label = "".join(ALPHABET[twister.between(0, 25)] for _ in range(length))
        yield f"{label}.{tld}"


def qakbot(options: Options) -> Iterator[str]:
    for date in options.dates():
        first = day_in_period(date, qakbot_period) * options.per_day
        sequence = qakbot_sequence(date)
        take(sequence, first)
        yield from take(sequence, options.per_day)


# ---------------------------------------------------------------------------
# Ramnit. Exact.
# Reference: J. Bader, "The DGA of Ramnit" (2014). The Park-Miller "minimal
# standard" generator (16807 mod 2^31-1, Schrage's method) seeded with a
# per-sample constant draws a length of 8-19 and letters a-y; after each
# domain the state is re-seeded from the product of two earlier states. The
# sequence does not depend on the date. Five published sample seeds, .com.

RAMNIT_SEEDS = (0xEF214BBF, 0x28488EEA, 0x4BFCBC6A, 0x79159C10, 0x92F4BE35)


def ramnit_sequence(seed: int) -> Iterator[str]:
    state = seed

    def draw(modulus: int) -> int:
        nonlocal state
        state = (16807 * (state % 127773) - 2836 * (state // 127773)) & MASK32
        return state % modulus

    while True:
        before_length = state
        length = draw(12) + 8
        after_length = state
        label = "".join(ALPHABET[draw(25)] for _ in range(length))
        yield label + ".com"
        product = before_length * after_length
        state = (product + (product >> 32)) & MASK32


def ramnit(options: Options) -> Iterator[str]:
    return round_robin([ramnit_sequence(seed) for seed in RAMNIT_SEEDS], options)


# ---------------------------------------------------------------------------
# Simda (Shiz). Exact for one published configuration.
# Reference: J. Bader, "The DGA of Simda/Shiz" (2015). A base value advanced
# by a step (the byte sum of a key string) is divided by 3, 5, 7, ... to pick
# alternately a consonant and a vowel: pronounceable 7-letter names, .com.
# Samples differ in key, base, length and TLD; this is one of them. The
# sequence does not depend on the date.

SIMDA_KEY = "1676d5775e05c50b46baa5579d4fc7"
SIMDA_BASE = 0x45AE94B2
SIMDA_CONSONANTS = "qwrtpsdfghjklzxcvbnm"
SIMDA_VOWELS = "eyuioa"


def simda_sequence() -> Iterator[str]:
    step = sum(SIMDA_KEY.encode("ascii"))
    base = SIMDA_BASE
    while True:
        base = (base + step) & MASK32
        label = []
        for i in range(7):
            value = base // (3 + 2 * i)
            if i % 2 == 0:
                label.append(SIMDA_CONSONANTS[value % 20])
            else:
                label.append(SIMDA_VOWELS[value % 6])
        yield "".join(label) + ".com"


def simda(options: Options) -> Iterator[str]:
    return round_robin([simda_sequence()], options)


# ---------------------------------------------------------------------------
# Suppobox. Structural: the algorithm is the published one, the word list is
# not.
# Reference: Endgame, "Malware with a Personal Touch" (2014), and the RSA
# Conference 2015 talk "End-to-End Analysis of a Domain Generating Algorithm
# Malware Family". The seed is the Unix time divided by 512; for each of 85
# consecutive seeds, 15 of its bits are permuted, 7 of them index the first
# word and 8 (plus 128) the second word of a 384-word list; the two words
# are joined under .net. Suppobox ships its own word lists; here 384 words
# of 4-8 letters are drawn from the word file instead. A day gives the names
# of its first M seeds (at most 168 + 85 distinct seeds fall in one day).

SUPPOBOX_PERMUTATION = (3, 9, 13, 6, 2, 4, 11, 7, 14, 1, 10, 5, 8, 12, 0)


def suppobox_domain(seed: int, words: list[str]) -> str:
    bits = [0] * 15
    for position in SUPPOBOX_PERMUTATION:
        bits[position] = seed & 1
        seed >>= 1
    first = 0
    for bit in bits[:7]:
        first = (first << 1) | bit
    second = 0
    for bit in bits[7:]:
        second = (second << 1) | bit
    return words[first] + words[second + 0x80] + ".net"


def suppobox(options: Options) -> Iterator[str]:
    words = pick_words(options.words, "suppobox", 384, 4, 8)
    for date in options.dates():
        first_seed = epoch_seconds(date) >> 9
        last_seed = (epoch_seconds(date) + 86399) >> 9
        seeds = range(first_seed, last_seed + 85)
        for seed in seeds[:options.per_day]:
            yield suppobox_domain(seed, words)


# ---------------------------------------------------------------------------
# Tinba (TinyBanker). Exact.
# Reference: garage4hackers "Tinba DGA" (2014) and J. Bader, "New Top Level
# Domains for Tinba's DGA" (2015). Starting from a hard-coded domain, each
# next 12-letter name is built byte by byte from the previous name and a
# 16-byte sample seed string, retrying until the byte is a letter b-y; each
# name is tried under every TLD of the sample. Four published sample
# configurations, taken in turn. The sequence does not depend on the date.

TINBA_CONFIGS = (
    ("oGkS3w3sGGOGG7oc", "ssrgwnrmgrxe.com", ("com",)),
    ("jc74FlUna852Ji9o", "blackfreeqazyio.cc", ("com", "net", "in", "ru")),
    ("yqokqFC2TPBFfJcG", "watchthisnow.xyz", ("pw", "us", "xyz", "club")),
    ("j193HsnW72Yqns7u", "j193hsne720uie8i.cc", ("com", "net", "biz", "org")),
)


def tinba_sequence(seed: str, domain: str, tlds: tuple[str, ...]) -> Iterator[str]:
    seed_bytes = seed.encode("ascii").ljust(17, b"\0")
    yield domain
    while True:
        previous = domain.encode("ascii")
        seed_sum = sum(seed_bytes[:16])
        value = seed_bytes[15]
        label = []
        for i in range(12):
            while True:
                value = (((value + previous[i]) ^ (seed_sum & 0xFF)) + previous[i + 1]) & 0xFF
                if ord("a") < value < ord("z"):
                    label.append(chr(value))
                    break
                seed_sum += 1
        base = "".join(label)
        for tld in tlds:
            domain = f"{base}.{tld}"
            yield domain


def tinba(options: Options) -> Iterator[str]:
    return round_robin([tinba_sequence(*config) for config in TINBA_CONFIGS], options)


# ---------------------------------------------------------------------------

FAMILIES: dict[str, Callable[[Options], Iterator[str]]] = {
    "banjori": banjori,
    "corebot": corebot,
    "cryptolocker": cryptolocker,
    "gameover": gameover,
    "kraken": kraken,
    "locky": locky,
    "matsnu": matsnu,
    "necurs": necurs,
    "pykspa": pykspa,
    "qakbot": qakbot,
    "ramnit": ramnit,
    "simda": simda,
    "suppobox": suppobox,
    "tinba": tinba,
}
WORDLIST_FAMILIES = {"matsnu", "suppobox"}


def is_valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and len(domain) <= 253 and all(LABEL.match(l) for l in labels)


def read_words(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [w for w in (line.strip() for line in f) if re.fullmatch(r"[a-z]+", w)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print domains of malware DGAs as 'domain<TAB>family' lines.")
    parser.add_argument("--start", required=True, type=dt.date.fromisoformat,
                        help="first day, YYYY-MM-DD")
    parser.add_argument("--days", required=True, type=int, help="number of days")
    parser.add_argument("--per-day", required=True, type=int,
                        help="domains per family per day")
    parser.add_argument("--words", help="word list, one word a line "
                        "(needed by the word-list families: "
                        + ", ".join(sorted(WORDLIST_FAMILIES)) + ")")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES),
                        help="only this family (repeatable); default all")
    args = parser.parse_args(argv)
    if args.days < 0 or args.per_day < 0:
        parser.error("--days and --per-day must not be negative")
    families = args.family or list(FAMILIES)
    if WORDLIST_FAMILIES.intersection(families) and not args.words:
        parser.error("--words is required for " + ", ".join(
            sorted(WORDLIST_FAMILIES.intersection(families))))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    words = read_words(args.words) if args.words else []
    options = Options(args.start, args.days, args.per_day, words)
    seen: set[str] = set()
    out = sys.stdout
    for name in sorted(set(args.family or FAMILIES)):
        for domain in FAMILIES[name](options):
            if not is_valid_domain(domain):
                raise SystemExit(f"dga.py: {name} produced an invalid domain: {domain!r}")
            if domain not in seen:
                seen.add(domain)
                out.write(f"{domain}\t{name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
