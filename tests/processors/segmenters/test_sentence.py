import pytest

from processors.document import Document
from processors.exceptions import ConfigError
from processors.segmenters.sentence import Sentencizer, SentencizerConfig

TEXT = "Someone is waiting at the bus stop. John looks surprised, his face seems familiar."


class TestSentencizer:
    def test_splits_sentences_with_offset_location_and_parent(self) -> None:
        doc = Sentencizer().run(docs=[Document(id="d", text=TEXT)]).docs[0]
        assert [c.text for c in doc.chunks] == [
            "Someone is waiting at the bus stop.",
            "John looks surprised, his face seems familiar.",
        ]
        assert [c.id for c in doc.chunks] == ["d/0", "d/1"]
        assert all(c.parent_id == "d" and c.granularity == 1 for c in doc.chunks)
        assert [c.offset for c in doc.chunks] == [0, 1]
        for chunk in doc.chunks:
            start, end = chunk.location
            assert TEXT[start:end] == chunk.text

    def test_custom_punctuation_makes_three_sentences(self) -> None:
        doc = Sentencizer(SentencizerConfig(punctuation=".,")).run(docs=[Document(id="d", text=TEXT)]).docs[0]
        assert [c.text for c in doc.chunks] == [
            "Someone is waiting at the bus stop.", "John looks surprised,", "his face seems familiar."]

    def test_wrapped_lines_stay_one_sentence_but_blank_lines_split(self) -> None:
        text = "Parse the command\nline arguments\n\nSecond paragraph here"
        chunks = Sentencizer().run(docs=[Document(id="d", text=text)]).docs[0].chunks
        assert [c.text for c in chunks] == ["Parse the command line arguments", "Second paragraph here"]

    def test_min_length_drops_short_sentences_and_max_length_windows_long_ones(self) -> None:
        config = SentencizerConfig(min_sent_len=10, max_sent_len=12)
        chunks = Sentencizer(config).run(docs=[Document(id="d", text="Short. A much longer sentence here.")]).docs[0].chunks
        # Every word is kept, in windows cut between words; min_sent_len applies to whole sentences only.
        assert [c.text for c in chunks] == ["A much", "longer", "sentence", "here."]

    def test_a_text_with_no_sentence_of_min_length_is_kept_whole_not_dropped(self) -> None:
        """Issue 21: "Toast." under min_sent_len=8 gave no chunk, so no vector: reported searchable, never found."""
        config = SentencizerConfig(min_sent_len=8)
        [toast, two] = Sentencizer(config).run(docs=[Document(id="t", text="Toast."),
                                                     Document(id="u", text="Hi. Go on!")]).docs
        assert [(c.id, c.text, c.location) for c in toast.chunks] == [("t/0", "Toast.", [0, 6])]
        assert [c.text for c in two.chunks] == ["Hi.", "Go on!"]

    def test_does_not_mutate_input_and_handles_missing_text(self) -> None:
        original = Document(id="d", text=None)
        result = Sentencizer().run(docs=[original]).docs[0]
        assert result.chunks == [] and original.chunks == []

    def test_invalid_config_is_rejected(self) -> None:
        with pytest.raises(ConfigError):
            SentencizerConfig(min_sent_len=10, max_sent_len=5)
        with pytest.raises(ConfigError, match="window_overlap"):
            SentencizerConfig(max_sent_len=100, window_overlap=100)
        assert SentencizerConfig(max_sent_len=300).window_overlap == 75


LOG_LINE = "2026-11-30 10:51:06 INFO worker-3 processed batch 1234 from queue ingest in 12 ms"


def whale_log() -> str:
    """A log line repeated 25 times without punctuation, 'whale' in its 24th copy."""
    lines = [LOG_LINE] * 25
    lines[23] = LOG_LINE.replace("queue ingest", "queue whale-alerts")
    return " ".join(lines)


class TestLongSpans:
    """Nothing of a span longer than max_sent_len is dropped: it becomes overlapping windows."""

    def test_the_end_of_a_long_unpunctuated_log_line_is_kept(self) -> None:
        text = whale_log()
        chunks = Sentencizer().run(docs=[Document(id="log", text=text)]).docs[0].chunks
        assert len(chunks) > 1 and any("whale" in c.text for c in chunks)
        assert chunks[-1].text.endswith("in 12 ms") and chunks[-1].location[1] == len(text)

    @pytest.mark.parametrize("max_sent_len, overlap", [(12, None), (40, 0), (40, 10), (100, 30), (512, None)])
    def test_windows_cover_the_span_overlap_and_cut_between_words(self, max_sent_len: int, overlap: int | None) -> None:
        text = whale_log()
        config = SentencizerConfig(max_sent_len=max_sent_len, window_overlap=overlap)
        chunks = Sentencizer(config).run(docs=[Document(id="log", text=text)]).docs[0].chunks
        words = text.split(" ")
        starts = {sum(len(w) + 1 for w in words[:i]) for i in range(len(words))}
        covered = 0
        for chunk in chunks:
            start, end = chunk.location
            assert len(chunk.text) <= max_sent_len and chunk.text == " ".join(text[start:end].split())
            assert start in starts and (end == len(text) or text[end] == " ")  # whole words
            assert text[covered:start].strip() == ""  # no gap: every word is in some window
            effective = config.window_overlap or 0
            if covered and effective >= 12:
                assert start < covered  # the overlap holds a word or more (the longest is 12 characters)
            covered = max(covered, end)
        assert covered == len(text)
        assert [c.id for c in chunks] == [f"log/{i}" for i in range(len(chunks))]

    def test_consecutive_windows_share_words(self) -> None:
        config = SentencizerConfig(max_sent_len=12, window_overlap=6)
        chunks = Sentencizer(config).run(docs=[Document(id="d", text="a b c d e f g h i j k l m n o p")]).docs[0].chunks
        assert [c.text for c in chunks] == ["a b c d e f", "d e f g h i", "g h i j k l", "j k l m n o", "m n o p"]

    def test_a_word_longer_than_a_window_is_cut_inside(self) -> None:
        text = "see " + "x" * 50 + " end"
        chunks = Sentencizer(SentencizerConfig(max_sent_len=20, window_overlap=5)).run(
            docs=[Document(id="d", text=text)]).docs[0].chunks
        assert all(len(c.text) <= 20 for c in chunks)
        assert "".join(c.text for c in chunks).count("x") >= 50 and chunks[-1].text.endswith("end")


class TestUnspacedPunctuation:
    def test_chinese_full_stops_split_without_a_space(self) -> None:
        text = "东京是日本的首都。北京是中国的首都。巴黎是法国的首都。"
        chunks = Sentencizer().run(docs=[Document(id="zh", text=text)]).docs[0].chunks
        assert [c.text for c in chunks] == ["东京是日本的首都。", "北京是中国的首都。", "巴黎是法国的首都。"]
        assert [text[slice(*c.location)] for c in chunks] == [c.text for c in chunks]

    def test_japanese_questions_and_exclamations_split_and_closing_quotes_stay(self) -> None:
        text = "本当ですか？はい、本当です！「ありがとう。」また明日。"
        chunks = Sentencizer().run(docs=[Document(id="ja", text=text)]).docs[0].chunks
        assert [c.text for c in chunks] == ["本当ですか？", "はい、本当です！", "「ありがとう。」", "また明日。"]

    def test_mixed_text_and_switching_it_off(self) -> None:
        text = "Tokyo is big. 东京很大。北京也很大。"
        assert [c.text for c in Sentencizer().run(docs=[Document(id="m", text=text)]).docs[0].chunks] == [
            "Tokyo is big.", "东京很大。", "北京也很大。"]
        off = Sentencizer(SentencizerConfig(unspaced_punctuation=""))
        assert [c.text for c in off.run(docs=[Document(id="m", text=text)]).docs[0].chunks] == [
            "Tokyo is big.", "东京很大。北京也很大。"]

    def test_a_long_run_of_chinese_becomes_overlapping_windows(self) -> None:
        text = "东京是日本的首都" * 20  # 160 characters, no terminator, no space
        chunks = Sentencizer(SentencizerConfig(max_sent_len=50)).run(docs=[Document(id="zh", text=text)]).docs[0].chunks
        assert len(chunks) > 3 and all(len(c.text) <= 50 for c in chunks)
        assert chunks[0].location[0] == 0 and chunks[-1].location[1] == len(text)
        assert all(later.location[0] < earlier.location[1] for earlier, later in zip(chunks, chunks[1:]))
