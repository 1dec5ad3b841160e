"""Tests of d2lgru.data against the book's facts and a literal transcription of its code
(``benchmarks/_book_pipeline.py``).

No test touches the network: The Time Machine comes from the ``data_dir`` fixture
(``$D2LGRU_DATA_DIR``, else ``../shared/data``, as in the rest of the suite), and downloads
come from a real HTTP server on 127.0.0.1 in the test (good, tampered, trickling or cut short),
a refused connection on 127.0.0.1:9, or a patched ``urlopen``.
"""

import contextlib
import hashlib
import http.server
import io
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from d2lgru import data
from d2lgru.errors import InvalidArgumentError, InvalidTypeError
from d2lgru.data import (DataError, SeqDataLoader, Vocab, find_time_machine, load_corpus,
                         load_corpus_time_machine, load_data_time_machine, read_time_machine,
                         seq_data_iter_random, seq_data_iter_sequential, tokenize)
from helpers import book_pipeline

BOOK_CHAR_ORDER = ['<unk>', ' ', 'e', 't', 'a', 'i', 'n', 'o', 's', 'h', 'r', 'd', 'l', 'm',
                   'u', 'c', 'f', 'w', 'g', 'y', 'p', 'b', 'v', 'k', 'x', 'z', 'j', 'q']


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Isolate every test from the user's cache, data variable and the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "TIME_MACHINE_URL", "http://127.0.0.1:9/timemachine.txt")


# --------------------------------------------------------------------------- the book, literally


book = book_pipeline()


def book_seq_data_iter_random(corpus, batch_size, num_steps, rng):
    """The book's iterator with the draws d2lgru makes: offset, then the permutation."""
    offset = int(rng.integers(0, num_steps))
    order = rng.permutation((len(corpus) - offset - 1) // num_steps)
    return book.seq_data_iter_random(corpus, batch_size, num_steps, offset, order)


def book_seq_data_iter_sequential(corpus, batch_size, num_steps, rng):
    offset = int(rng.integers(0, num_steps + 1))
    return book.seq_data_iter_sequential(corpus, batch_size, num_steps, offset)


@pytest.fixture(scope="session")
def time_machine(data_dir):
    """The book's file where the whole suite reads it (``$D2LGRU_DATA_DIR``, else ../shared/data)."""
    return data_dir / "timemachine.txt"


@pytest.fixture(scope="module")
def char_corpus(data_dir):
    return load_corpus_time_machine(path=data_dir)


# --------------------------------------------------------------------------- facts of the book


def test_shared_copy_is_the_books_file(time_machine):
    assert hashlib.sha1(time_machine.read_bytes()).hexdigest() == data.TIME_MACHINE_SHA1


def test_read_time_machine_matches_book(data_dir, time_machine):
    lines = read_time_machine(data_dir)
    assert lines == book.read_time_machine(time_machine)
    assert len(lines) == 3221
    assert lines[0] == 'the time machine by h g wells'
    assert '' in lines  # empty lines are kept


def test_char_facts(char_corpus):
    corpus, vocab = char_corpus
    assert corpus.dtype == np.uint8 and corpus.ndim == 1  # one byte per token
    assert len(corpus) == 170580
    assert len(vocab) == 28
    assert vocab.idx_to_token == BOOK_CHAR_ORDER
    assert vocab[' '] == 1 and vocab['e'] == 2 and vocab['t'] == 3 and vocab['q'] == 27
    assert corpus.min() >= 0 and corpus.max() < len(vocab)


def test_word_facts(data_dir):
    corpus, vocab = load_corpus_time_machine(token='word', path=data_dir)
    assert len(corpus) == 32775
    assert len(vocab) == 4580 and len(vocab.token_freqs) == 4579
    assert vocab.idx_to_token[:6] == ['<unk>', 'the', 'i', 'and', 'of', 'a']
    assert corpus.max() < len(vocab)


@pytest.mark.parametrize("token", ["char", "word"])
def test_corpus_equals_book_reference(token, data_dir, time_machine):
    ref_corpus, ref_vocab = book.load_corpus_time_machine(time_machine, token=token)
    corpus, vocab = load_corpus_time_machine(token=token, path=data_dir)
    assert vocab.idx_to_token == ref_vocab.idx_to_token
    assert vocab.token_freqs == ref_vocab._token_freqs
    np.testing.assert_array_equal(corpus, np.array(ref_corpus, dtype=np.int64))
    truncated, _ = load_corpus_time_machine(1000, token=token, path=data_dir)
    np.testing.assert_array_equal(truncated, np.array(ref_corpus[:1000]))


@pytest.mark.parametrize("token", ["char", "word"])
def test_vectorised_cleaning_on_awkward_text(tmp_path, token):
    text = ("  Hello,  World!!\r\nIt's 42 -- élan\rvital\n\n\tend--of--line  \n"
            "x\n--lead\ntrail--\nA\u2028B\fC\x85D\n")
    path = tmp_path / "awkward.txt"
    path.write_bytes(text.encode("utf-8"))
    ref_corpus, ref_vocab = book.load_corpus_time_machine(path, token=token)
    corpus, vocab = load_corpus(path, token=token)
    assert vocab.idx_to_token == ref_vocab.idx_to_token
    np.testing.assert_array_equal(corpus, np.array(ref_corpus, dtype=np.int64))
    assert read_time_machine(path) == book.read_time_machine(path)


@pytest.mark.parametrize("seed,piece", [(0, 1), (1, 7), (2, 64), (3, 1 << 20), (4, 1 << 20)])
def test_vectorised_cleaning_on_random_text(tmp_path, monkeypatch, seed, piece):
    """Large texts are cleaned in pieces cut after line breaks; any piece size gives the
    book's result."""
    monkeypatch.setattr(data, "_PIECE", piece)
    alphabet = list("aBz ,.!-\t\n\r\fé\u2028") + ["\r\n", "  ", "Qq"]
    rng = np.random.default_rng(seed)
    text = "".join(rng.choice(alphabet, size=3000))
    path = tmp_path / "random.txt"
    path.write_bytes(text.encode("utf-8"))
    for token in ("char", "word"):
        ref_corpus, ref_vocab = book.load_corpus_time_machine(path, token=token)
        corpus, vocab = load_corpus(path, token=token)
        assert vocab.idx_to_token == ref_vocab.idx_to_token
        np.testing.assert_array_equal(corpus, np.array(ref_corpus, dtype=np.int64))


@pytest.mark.parametrize("text", ["", " ", "  ,, \n -- \n", "\n\n", "a", " a ", "a\n", "\nb",
                                  "a" + " " * 50 + "\nb", "a  ,  ,  b" + " ,\t" * 40 + "\r",
                                  "word" + " " * 300, " " * 10 + "x" + " " * 10 + "\r\ny z  ",
                                  "A,\n\n  ,B,  \r\r  C. \u2028 d"])
def test_cleaning_of_texts_with_few_or_no_letters(tmp_path, text):
    path = tmp_path / "few.txt"
    path.write_bytes(text.encode())
    ref_corpus, ref_vocab = book.load_corpus_time_machine(path, token="char")
    corpus, vocab = load_corpus(path, token="char")
    assert vocab.idx_to_token == ref_vocab.idx_to_token
    np.testing.assert_array_equal(corpus, np.array(ref_corpus, dtype=np.int64))


def test_tokenize(data_dir):
    assert tokenize(['ab c']) == [['ab', 'c']]  # the book's default is 'word'
    assert tokenize(['ab c'], 'char') == [['a', 'b', ' ', 'c']]
    with pytest.raises(ValueError, match=r"token must be one of \('char', 'word'\), got 'byte'"):
        tokenize(['ab'], 'byte')
    with pytest.raises(ValueError, match="'byte'"):
        load_corpus_time_machine(token='byte', path=data_dir)


# --------------------------------------------------------------------------- vocabulary


def test_vocab_matches_book_with_min_freq_and_reserved():
    tokens = [['b', 'a', 'c'], ['a', 'b', 'd', 'a', 'e', 'e']]
    for kwargs in ({}, {'min_freq': 2}, {'reserved_tokens': ['<pad>', 'b']}):
        ref = book.Vocab(tokens, **kwargs)
        vocab = Vocab(tokens, **kwargs)
        assert vocab.idx_to_token == ref.idx_to_token
        assert vocab.token_freqs == ref._token_freqs
    vocab = Vocab(['x', 'y', 'y'])  # 1-D tokens
    assert vocab.idx_to_token == ['<unk>', 'y', 'x']
    assert vocab['zzz'] == vocab.unk == 0
    assert vocab[['y', ('x',)]] == [1, [2]]
    assert vocab.to_tokens([1, 2]) == ['y', 'x']
    assert vocab.to_tokens(np.array([2, 1])) == ['x', 'y']
    assert vocab.to_tokens(1) == 'y'
    assert len(Vocab()) == 1


def test_vocab_takes_any_iterable_and_refuses_what_it_would_mangle():
    assert Vocab(c for c in "abb").idx_to_token == ['<unk>', 'b', 'a']  # was: no len()
    vocab = Vocab(['x', 'y', 'y'])
    assert vocab[np.array(['x', 'q'])] == [2, 0] and vocab.to_tokens(range(2)) == ['<unk>', 'y']
    with pytest.raises(InvalidArgumentError, match="^min_freq must be a non-negative integer"):
        Vocab(['x'], min_freq='2')
    with pytest.raises(InvalidTypeError, match=r"^reserved_tokens must be a list such as \['<p"):
        Vocab(['x'], reserved_tokens='<pad>')  # was: reserved '<', 'p', 'a', 'd', '>'
    for bad in (['<unk>'], ['<pad>', '<pad>']):  # its JSON would not load
        with pytest.raises(InvalidArgumentError, match="^reserved_tokens must be distinct and not"):
            Vocab(['x'], reserved_tokens=bad)


def test_to_tokens_refuses_an_index_outside_the_vocabulary(char_corpus):
    vocab = Vocab(['x', 'y', 'y'])  # indices 0..2
    for bad, shown in (([-1], -1), ([999], 999), ([1, -2, 5], -2), (3, 3), (-1, -1),
                       (np.array([0, 2, 3]), 3), (np.array([2, 1], np.int8) - 5, -4),
                       ((0, 7), 7)):
        with pytest.raises(InvalidArgumentError, match=rf"token index {shown} is out of range; "
                                                       rf"this vocabulary's indices are 0\.\.2$"):
            vocab.to_tokens(bad)
    for bad in (1.0, "x", [1.5], [True, False], np.array([[1, 2]]), [[1, 2], [1]], None):
        with pytest.raises(InvalidTypeError, match=r"token indices must be integers from 0 to 2"):
            vocab.to_tokens(bad)
    assert vocab.to_tokens(np.uint8(2)) == 'x' and vocab.to_tokens(np.array(1)) == 'y'
    assert vocab.to_tokens([]) == [] and vocab.to_tokens(np.array([], np.int64)) == []
    assert vocab.to_tokens((2, 0)) == ['x', '<unk>']
    # a whole corpus is checked in one NumPy pass: a bad index at its end is found
    corpus, book_vocab = char_corpus
    assert "".join(book_vocab.to_tokens(corpus[:9])) == "the time "
    bad = corpus.astype(np.int64)
    bad[-1] = len(book_vocab)
    with pytest.raises(InvalidArgumentError, match=rf"token index {len(book_vocab)} is out"):
        book_vocab.to_tokens(bad)


def test_vocab_json_roundtrip(tmp_path, char_corpus):
    _, vocab = char_corpus
    path = tmp_path / "vocab.json"
    vocab.to_json(path)
    loaded = Vocab.from_json(path)
    assert loaded == vocab
    assert loaded.idx_to_token == BOOK_CHAR_ORDER
    assert loaded['q'] == 27
    assert loaded.token_freqs[0] == (' ', vocab.token_freqs[0][1])
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    '{"idx_to_token": ["a", "b"]}',
    '{"idx_to_token": ["<unk>", "a", "a"]}',
    '{"idx_to_token": ["<unk>", "a"], "token_freqs": [["a", -1]]}',
])
def test_vocab_malformed_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"is not a valid d2lgru vocabulary JSON file") as info:
        Vocab.from_json(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- iterators


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("batch_size,num_steps", [(32, 35), (2, 5), (3, 1)])
def test_iterators_equal_book(char_corpus, seed, batch_size, num_steps):
    corpus = char_corpus[0][:10000]
    pairs = [(seq_data_iter_random, book_seq_data_iter_random),
             (seq_data_iter_sequential, book_seq_data_iter_sequential)]
    for ours, book in pairs:
        got = list(ours(corpus, batch_size, num_steps, np.random.default_rng(seed)))
        want = list(book(corpus.tolist(), batch_size, num_steps, np.random.default_rng(seed)))
        assert len(got) == len(want) > 0
        for (x, y), (rx, ry) in zip(got, want):
            assert x.dtype == np.int64 and y.dtype == np.int64
            assert x.shape == y.shape == (batch_size, num_steps)
            np.testing.assert_array_equal(x, rx)
            np.testing.assert_array_equal(y, ry)


@pytest.mark.parametrize("widen_bytes", [1, 8 * 6 * 5 * 3 + 1, 1 << 20])
def test_narrow_corpus_gives_the_int64_corpus_batches(char_corpus, monkeypatch, widen_bytes):
    """A uint8 corpus is widened a block of batches at a time; every block size yields the
    batches of the int64 corpus, read-only, and the corpus itself stays narrow."""
    monkeypatch.setattr(data, "_WIDEN_BYTES", widen_bytes)
    narrow = char_corpus[0][:3000]
    wide = narrow.astype(np.int64)
    for iterate in (seq_data_iter_sequential, seq_data_iter_random):
        got = list(iterate(narrow, 6, 5, np.random.default_rng(3)))
        want = list(iterate(wide, 6, 5, np.random.default_rng(3)))
        assert len(got) == len(want) > 0
        for (x, y), (wx, wy) in zip(got, want):
            assert x.dtype == y.dtype == np.int64
            np.testing.assert_array_equal(x, wx)
            np.testing.assert_array_equal(y, wy)
        if iterate is seq_data_iter_sequential:
            assert not got[0][0].flags.writeable
    loader = SeqDataLoader(narrow, char_corpus[1], 6, 5)
    assert loader.corpus.dtype == np.uint8


@pytest.mark.parametrize("size,dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                        (1 << 16, np.uint16), ((1 << 16) + 1, np.uint32)])
def test_index_dtype_holds_every_index(size, dtype):
    assert data.index_dtype(size) == dtype


def test_word_corpus_is_uint16(data_dir):
    corpus, vocab = load_corpus_time_machine(token="word", path=data_dir)
    assert corpus.dtype == np.uint16 and len(vocab) > 256


@pytest.mark.parametrize("use_random_iter", [False, True])
def test_book_config_has_8_batches_every_epoch(use_random_iter, data_dir):
    loader, vocab = load_data_time_machine(32, 35, use_random_iter, path=data_dir)
    assert len(loader.corpus) == 10000 and len(vocab) == 28
    assert len(loader) == 8
    assert all(loader.num_batches(epoch) == 8 for epoch in range(200))
    for epoch in range(12):
        assert loader.num_batches(epoch) == 8
        batches = list(loader)
        assert len(batches) == 8
        for x, y in batches:
            assert x.shape == y.shape == (32, 35)
            assert x.min() >= 0 and max(x.max(), y.max()) < len(vocab)
            np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # Y is X shifted by one
    assert loader.epoch == 12


def first_x(loader):
    return next(iter(loader))[0]


@pytest.mark.parametrize("use_random_iter", [False, True])
def test_epochs_reproducible_and_distinct(char_corpus, use_random_iter):
    corpus, vocab = char_corpus
    corpus = corpus[:10000]
    a = SeqDataLoader(corpus, vocab, 32, 35, use_random_iter, seed=3)
    b = SeqDataLoader(corpus, vocab, 32, 35, use_random_iter, seed=3)
    other = SeqDataLoader(corpus, vocab, 32, 35, use_random_iter, seed=4)
    epochs_a = [first_x(a) for _ in range(6)]
    epochs_b = [first_x(b) for _ in range(6)]
    epochs_other = [first_x(other) for _ in range(6)]
    for xa, xb in zip(epochs_a, epochs_b):
        np.testing.assert_array_equal(xa, xb)
    assert any(not np.array_equal(xa, xo) for xa, xo in zip(epochs_a, epochs_other))
    if use_random_iter:  # a new permutation every epoch
        for prev, cur in zip(epochs_a, epochs_a[1:]):
            assert not np.array_equal(prev, cur)
    else:
        # a fresh offset in [0, 35] each epoch; independent draws, so two consecutive
        # epochs may share one (probability 1/36), as with the book's random.randint
        offsets = [int(a.rng(e).integers(0, 36)) for e in range(6)]
        assert len(set(offsets)) >= 3
        for offset, x in zip(offsets, epochs_a):
            np.testing.assert_array_equal(x[0], corpus[offset:offset + 35])


@pytest.mark.parametrize("use_random_iter", [False, True])
def test_set_epoch_replays(char_corpus, use_random_iter):
    corpus, vocab = char_corpus
    loader = SeqDataLoader(corpus[:10000], vocab, 32, 35, use_random_iter, seed=5)
    epochs = [[x for x, _ in loader] for _ in range(4)]
    loader.set_epoch(2)
    replay = [x for x, _ in loader]
    assert loader.epoch == 3
    assert len(replay) == len(epochs[2])
    for x, r in zip(epochs[2], replay):
        np.testing.assert_array_equal(x, r)
    resumed = SeqDataLoader(corpus[:10000], vocab, 32, 35, use_random_iter, seed=5)
    resumed.epoch = 3
    np.testing.assert_array_equal(first_x(resumed), epochs[3][0])
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        loader.set_epoch(-1)


def test_len_is_a_lower_bound_and_num_batches_exact():
    corpus = np.arange(1000)
    vocab = Vocab()
    for use_random_iter in (False, True):
        loader = SeqDataLoader(corpus, vocab, 4, 10, use_random_iter, seed=0)
        for epoch in range(20):
            n = loader.num_batches(epoch)
            assert n >= len(loader)
            assert len(list(loader)) == n


def test_non_positive_sizes_rejected(char_corpus, data_dir):
    corpus, vocab = char_corpus
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        SeqDataLoader(corpus, vocab, 0, 35)
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got -3"):
        SeqDataLoader(corpus, vocab, 32, -3, True)
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
        seq_data_iter_random(corpus, 2, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        load_data_time_machine(-1, 35, path=data_dir)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -2"):
        SeqDataLoader(corpus, vocab, 2, 3, seed=-2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got True"):
        load_data_time_machine(True, 35, path=data_dir)  # a bool is no count (True was 1)
    with pytest.raises(InvalidTypeError, match=r"^max_tokens must be an integer .*got True$"):
        load_data_time_machine(2, 5, max_tokens=True, path=data_dir)
    with pytest.raises(InvalidTypeError, match="^data path must be a str or a pathlib.Path, got int$"):
        load_data_time_machine(2, 5, path=3)


def test_use_random_iter_must_be_a_bool(char_corpus, data_dir):
    corpus, vocab = char_corpus
    for bad in ("yes", "False", 1, 0, None, 1.0):
        with pytest.raises(InvalidTypeError, match=rf"use_random_iter must be True or False, got "
                                                   rf"{re.escape(repr(bad))} \("):
            load_data_time_machine(4, 5, bad, path=data_dir)
        with pytest.raises(InvalidTypeError, match="use_random_iter must be True or False"):
            SeqDataLoader(corpus, vocab, 4, 5, bad)
    for flag in (True, False, np.bool_(True), np.False_):
        loader, _ = load_data_time_machine(4, 5, flag, max_tokens=400, path=data_dir)
        assert loader.use_random_iter is bool(flag) and len(list(loader)) >= 1


def test_too_short_corpus_rejected():
    vocab = Vocab()
    with pytest.raises(ValueError, match=re.escape(
            "corpus has 50 tokens, too short for one batch of batch_size=32 x num_steps=35 "
            "(needs at least 1156 tokens)")):
        SeqDataLoader(np.zeros(50, dtype=np.int64), vocab, 32, 35)
    with pytest.raises(ValueError, match=r"needs at least 1155 tokens"):
        SeqDataLoader(np.zeros(50, dtype=np.int64), vocab, 32, 35, use_random_iter=True)
    # the bound is exact: at the limit every offset yields one batch
    for use_random_iter, needed in ((False, 1156), (True, 1155)):
        loader = SeqDataLoader(np.arange(needed), vocab, 32, 35, use_random_iter)
        assert len(loader) == 1
        assert all(len(list(loader)) >= 1 for _ in range(20))
        with pytest.raises(ValueError, match="too short"):
            SeqDataLoader(np.arange(needed - 1), vocab, 32, 35, use_random_iter)


def test_corpus_must_be_1d_integers():
    with pytest.raises(ValueError, match="1-D sequence of token indices"):
        SeqDataLoader(np.zeros((40, 40), dtype=np.int64), Vocab(), 2, 3)
    with pytest.raises(ValueError, match="1-D sequence of token indices"):
        SeqDataLoader(np.zeros(400), Vocab(), 2, 3)


# --------------------------------------------------------------------------- finding the file


def test_explicit_path_file_or_directory(data_dir, time_machine):
    assert find_time_machine(data_dir) == time_machine
    assert find_time_machine(str(time_machine)) == time_machine


def test_missing_explicit_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        load_data_time_machine(32, 35, path=missing)
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="without timemachine.txt"):
        find_time_machine(tmp_path)


def test_data_path_that_is_no_regular_file_says_what_it_is(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/null"), "a character device"), (fifo, "a FIFO")):
        with pytest.raises(DataError, match=f"is not a regular file but {kind}") as info:
            load_data_time_machine(32, 35, path=path)
        assert f"data path {str(path)!r}" in str(info.value)
        assert "does not exist" not in str(info.value)
    holder = tmp_path / "holder"
    holder.mkdir()
    os.mkfifo(holder / "timemachine.txt")
    with pytest.raises(DataError, match="holds timemachine.txt, but it is a FIFO"):
        find_time_machine(holder)


def test_symlink_loops_end_in_a_data_error(tmp_path, monkeypatch):
    a, b, itself = tmp_path / "a", tmp_path / "b", tmp_path / "itself"
    os.symlink(b, a)
    os.symlink(a, b)
    os.symlink(itself, itself)
    for path in (a, itself, a / "timemachine.txt"):
        with pytest.raises(DataError, match="too many levels of symbolic links") as info:
            load_data_time_machine(32, 35, path=path)
        assert f"data path {str(path)!r} cannot be followed" in str(info.value)
    holder = tmp_path / "holder"
    holder.mkdir()
    os.symlink(holder / "timemachine.txt", holder / "timemachine.txt")
    with pytest.raises(DataError, match="holds timemachine.txt, but it is a symlink loop"):
        find_time_machine(holder)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(a))
    with pytest.raises(DataError, match=r"D2LGRU_DATA_DIR .* cannot be followed"):
        find_time_machine()


def test_data_dir_env_is_honoured(monkeypatch, tmp_path, data_dir, time_machine):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
    assert find_time_machine() == time_machine
    corpus, vocab = load_corpus_time_machine()
    assert len(corpus) == 170580 and len(vocab) == 28
    monkeypatch.setenv(data.DATA_DIR_ENV, str(time_machine))  # a file works too
    assert find_time_machine() == time_machine
    own = tmp_path / "own.txt"
    own.write_text("abc abc\n")
    assert find_time_machine(own) == own  # the explicit argument wins over the variable
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(DataError, match=r"D2LGRU_DATA_DIR .*absent.* does not exist"):
        find_time_machine()


def test_download_failure_gives_guidance(tmp_path):
    with pytest.raises(DataError) as info:
        load_data_time_machine(32, 35)
    message = str(info.value)
    assert message.startswith(
        "could not download The Time Machine from http://127.0.0.1:9/timemachine.txt (")
    assert data.TIME_MACHINE_SHA1 in message
    assert str(tmp_path / "xdg-cache" / "d2lgru") in message
    assert "D2LGRU_DATA_DIR" in message and "--data" in message
    assert isinstance(info.value, RuntimeError)
    assert not (tmp_path / "xdg-cache" / "d2lgru" / "timemachine.txt").exists()


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_is_verified_and_cached(monkeypatch, tmp_path, time_machine):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return FakeResponse(time_machine.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cached = tmp_path / "xdg-cache" / "d2lgru" / "timemachine.txt"
    assert find_time_machine() == cached
    assert find_time_machine() == cached
    assert len(calls) == 1  # the second call used the verified cache
    assert cached.read_bytes() == time_machine.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == ["timemachine.txt"]


def test_sha1_mismatch(monkeypatch, tmp_path, time_machine):
    cache = tmp_path / "xdg-cache" / "d2lgru"
    cache.mkdir(parents=True)
    (cache / "timemachine.txt").write_text("not the time machine\n")
    bad_sha = hashlib.sha1(b"not the time machine\n").hexdigest()
    # the cached copy is wrong and the download fails: both facts are named
    with pytest.raises(DataError) as info:
        find_time_machine()
    message = str(info.value)
    assert "could not download" in message
    assert bad_sha in message and data.TIME_MACHINE_SHA1 in message
    # the download itself serves wrong bytes: refused, the cache is left as it was
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: FakeResponse(b"tampered"))
    with pytest.raises(DataError, match=hashlib.sha1(b"tampered").hexdigest()) as info:
        find_time_machine()
    assert f"expected {data.TIME_MACHINE_SHA1}" in str(info.value)
    assert (cache / "timemachine.txt").read_text() == "not the time machine\n"
    assert sorted(p.name for p in cache.iterdir()) == ["timemachine.txt"]
    # a good download replaces the bad copy
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: FakeResponse(time_machine.read_bytes()))
    assert find_time_machine() == cache / "timemachine.txt"
    assert (cache / "timemachine.txt").read_bytes() == time_machine.read_bytes()


@contextlib.contextmanager
def local_server(body: bytes, *, trickle_s: float | None = None, hang_up_after: int | None = None):
    """A real HTTP server on 127.0.0.1 that answers any GET with ``body`` (its full length in
    Content-Length): all at once, or one byte every ``trickle_s`` seconds (for 8 s at most), or
    only the first ``hang_up_after`` bytes before it closes the connection. Yields the URL."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if trickle_s is None:
                    self.wfile.write(body[:hang_up_after])
                    return
                give_up = time.monotonic() + 8
                for i in range(len(body)):
                    if stop.is_set() or time.monotonic() > give_up:
                        return
                    self.wfile.write(body[i:i + 1])
                    time.sleep(trickle_s)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/timemachine.txt"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


def cache_holds_nothing(tmp_path) -> bool:
    cache = tmp_path / "xdg-cache" / "d2lgru"
    return not cache.exists() or not any(cache.iterdir())


def test_download_from_a_local_server_is_verified_and_cached(monkeypatch, tmp_path, time_machine,
                                                             capsys):
    with local_server(b"tampered") as url:
        monkeypatch.setenv(data.DATA_URL_ENV, url)
        with pytest.raises(DataError, match=hashlib.sha1(b"tampered").hexdigest()) as info:
            find_time_machine()
    assert str(info.value).startswith(f"the file downloaded from {url} has SHA-1")
    assert cache_holds_nothing(tmp_path)
    with local_server(time_machine.read_bytes()) as url:
        monkeypatch.setenv(data.DATA_URL_ENV, url)
        cached = find_time_machine()
    assert cached == tmp_path / "xdg-cache" / "d2lgru" / "timemachine.txt"
    assert cached.read_bytes() == time_machine.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == ["timemachine.txt"]
    assert capsys.readouterr().err == ""  # stderr is no terminal here: no progress bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_download_shows_progress_on_a_terminal(monkeypatch, time_machine):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with local_server(time_machine.read_bytes()) as url:
        monkeypatch.setenv(data.DATA_URL_ENV, url)
        find_time_machine()
    bar = sys.stderr.getvalue()
    assert "timemachine.txt:" in bar and "/179k" in bar  # the bar knows the file's size


@pytest.mark.parametrize("how", ["env", "constant"])
def test_download_that_trickles_ends_at_the_deadline(monkeypatch, tmp_path, time_machine, how):
    """A server that sends a byte every 0.2 s never trips a per-read timeout; the deadline on
    the whole download ends it, and nothing is left in the cache."""
    if how == "env":
        monkeypatch.setenv("D2LGRU_DOWNLOAD_DEADLINE_S", "1")
    else:
        monkeypatch.setattr(data, "DOWNLOAD_DEADLINE_S", 1)
    with local_server(time_machine.read_bytes(), trickle_s=0.2) as url:
        monkeypatch.setenv(data.DATA_URL_ENV, url)
        start = time.monotonic()
        with pytest.raises(DataError) as info:
            find_time_machine()
        elapsed = time.monotonic() - start
    assert elapsed < 4
    message = str(info.value)
    assert message.startswith(f"could not download The Time Machine from {url} (")
    assert "deadline" in message and "D2LGRU_DOWNLOAD_DEADLINE_S" in message
    assert "D2LGRU_DATA_DIR" in message and "--data" in message
    assert cache_holds_nothing(tmp_path)


def test_download_cut_short_is_one_data_error(monkeypatch, tmp_path, time_machine):
    with local_server(time_machine.read_bytes(), hang_up_after=1000) as url:
        monkeypatch.setenv(data.DATA_URL_ENV, url)
        with pytest.raises(DataError) as info:
            find_time_machine()
    assert str(info.value).startswith(f"could not download The Time Machine from {url} (")
    assert cache_holds_nothing(tmp_path)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_download_deadline_must_be_a_positive_number(monkeypatch, value):
    monkeypatch.setenv("D2LGRU_DOWNLOAD_DEADLINE_S", value)
    with pytest.raises(ValueError, match=f"D2LGRU_DOWNLOAD_DEADLINE_S must be a positive number "
                                         f"of seconds, got {value!r}"):
        find_time_machine()


def test_user_corpus_file(tmp_path):
    path = tmp_path / "my corpus.md"
    path.write_text("The quick brown fox.\nJumps over the lazy dog!\n" * 200)
    loader, vocab = load_data_time_machine(4, 5, True, max_tokens=-1, path=path)
    assert len(loader.corpus) == 200 * len("the quick brown foxjumps over the lazy dog")
    assert vocab.idx_to_token[1] == ' '
    assert vocab.to_tokens(loader.corpus[:19].tolist()) == list("the quick brown fox")
    words, word_vocab = load_corpus(path, token='word')
    assert len(words) == 200 * 9 and len(word_vocab) == 9  # 8 distinct words + <unk>
    assert read_time_machine(path)[:2] == ['the quick brown fox', 'jumps over the lazy dog']


def test_non_text_file_rejected(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc\xff\xfe\x00def")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 0xff at offset 3\)"):
        load_corpus(path)
    with pytest.raises(DataError, match="could not read corpus file"):
        load_corpus(tmp_path)


def test_a_bad_byte_deep_in_a_large_file_is_named_by_its_offset_and_non_ascii_text_loads(tmp_path):
    # the text is checked piece by piece as it is sliced out of the mapped file: the offset is
    # the file's, and a UTF-8 character is never split between two pieces
    line = "caf\u00e9 na\u00efve text, line\n".encode("utf-8")
    good = line * (3 * data._PIECE // len(line))
    path = tmp_path / "big.txt"
    path.write_bytes(good)
    corpus, vocab = load_corpus(path)
    expected, expected_vocab = book.load_corpus_time_machine(path)
    assert vocab.idx_to_token == expected_vocab.idx_to_token and corpus.tolist() == expected
    bad_at = 2 * data._PIECE + 5
    path.write_bytes(good[:bad_at] + b"\xff" + good[bad_at + 1:])
    with pytest.raises(DataError, match=rf"byte 0xff at offset {bad_at}\)"):
        load_corpus(path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    corpus, vocab = load_corpus(empty)
    assert corpus.size == 0 and len(vocab) == 1


@pytest.mark.parametrize("text, max_tokens, expected", [
    (b"12, 34!\n", -1, ""),  # no letter: nothing is kept of the codes' buffer
    (b"ab\n" * 5000, -1, "ab" * 5000),
    (b"ab\n" * 5000, 3, "aba"),  # the buffer is cut to three tokens
])
def test_the_corpus_is_a_writable_uint8_array_of_its_own_length(tmp_path, text, max_tokens,
                                                                expected):
    """The codes' buffer (an anonymous mapping on Linux) becomes the corpus, cut to its length,
    as writable as an array the user made."""
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    corpus, vocab = load_corpus(path, max_tokens=max_tokens)
    assert corpus.dtype == np.uint8 and corpus.flags.writeable
    assert "".join(vocab.to_tokens(corpus.tolist())) == expected
    corpus[:] = 0  # the user's to change


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_text_of_many_pieces_cleans_the_same_on_one_thread_or_two(tmp_path, monkeypatch,
                                                                     threads):
    """Pieces are cleaned by up to $D2LGRU_THREADS threads (the policy's count where unset);
    the corpus, and the first bad byte's offset, do not depend on how many."""
    monkeypatch.setattr(data, "_PIECE", 64)
    monkeypatch.setenv("D2LGRU_THREADS", threads)
    rng = np.random.default_rng(5)
    text = "".join(rng.choice(list("aBz ,.\n\r") + ["  ", "\u00e9"], size=40_000))
    path = tmp_path / "pieces.txt"
    path.write_bytes(text.encode("utf-8"))
    assert data._pipeline_workers(len(text) // 64) == int(threads)
    corpus, vocab = load_corpus(path)
    expected, expected_vocab = book.load_corpus_time_machine(path)
    assert vocab.idx_to_token == expected_vocab.idx_to_token and corpus.tolist() == expected
    raw = text.encode("utf-8")
    # two ASCII bytes made invalid (a broken two-byte character is reported at its first byte)
    first, second = (next(i for i in range(at, len(raw)) if raw[i - 1] < 0x80 and raw[i] < 0x80)
                     for at in (len(raw) // 2, 3 * len(raw) // 4))
    path.write_bytes(raw[:first] + b"\xff" + raw[first + 1:second] + b"\xfe" + raw[second + 1:])
    with pytest.raises(DataError, match=rf"byte 0xff at offset {first}\)"):
        load_corpus(path)


def test_an_error_while_a_mapped_text_is_read_is_the_error_seen(tmp_path, monkeypatch):
    """The text is read through NumPy views of the mapped file; an error raised while one is
    alive (its frame kept by the traceback) is what the caller sees, not the mapping's refusal
    to close (BufferError), and a Ctrl-C stays a KeyboardInterrupt."""
    path = tmp_path / "big.txt"
    path.write_bytes(b"some text, line\n" * (3 * data._PIECE // 16))
    clean = data._PieceCleaner.clean

    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        def failing(self, raw, out, cr=True, error=error):
            clean(self, raw, out, cr)
            raise error
        monkeypatch.setattr(data._PieceCleaner, "clean", failing)
        with pytest.raises(type(error)):
            load_corpus(path)
    monkeypatch.setattr(data._PieceCleaner, "clean", clean)
    corpus, _ = load_corpus(path)
    assert corpus.size > 0


def test_data_module_imports_no_framework():
    source = Path(data.__file__).read_text()
    imported = set(re.findall(r"^\s*(?:import|from)\s+([\w.]+)", source, flags=re.M))
    assert imported <= {"__future__", "collections", "concurrent.futures", "contextlib", "errno",
                        "hashlib", "threading",
                        "http.client", "json", "math", "mmap", "operator", "os", "re", "stat",
                        "sys", "time", "urllib.request", "pathlib", "typing", "numpy", "tqdm",
                        "._io", ".errors", ".spec", ".threads"}
