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

    def test_min_and_max_length(self) -> None:
        config = SentencizerConfig(min_sent_len=10, max_sent_len=12)
        chunks = Sentencizer(config).run(docs=[Document(id="d", text="Short. A much longer sentence here.")]).docs[0].chunks
        assert [c.text for c in chunks] == ["A much longe"]

    def test_does_not_mutate_input_and_handles_missing_text(self) -> None:
        original = Document(id="d", text=None)
        result = Sentencizer().run(docs=[original]).docs[0]
        assert result.chunks == [] and original.chunks == []

    def test_invalid_config_is_rejected(self) -> None:
        with pytest.raises(ConfigError):
            SentencizerConfig(min_sent_len=10, max_sent_len=5)
