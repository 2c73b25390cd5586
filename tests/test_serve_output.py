"""A choice's text as its tokens come: stop sequences held back and cut, a tokenizer that rewrites
text already sent, and the whole answer decoded at once."""

from __future__ import annotations

from distill.serve.output import ChoiceText


class Pieces:
    """A tokenizer whose token i is PIECES[i]; "." after " " drops the space, as cleanup rules do."""

    PIECES = ["Hello", " ", ".", " wor", "ld", "\ufffd", "STOP", "!"]

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(self.PIECES[i] for i in ids)
        return text.replace(" .", ".")


def stream(text: ChoiceText, ids: list[int]) -> list[str]:
    return [text.push(i) for i in ids] + [text.finish(ids)]


def test_pieces_add_up_to_the_answer_and_a_stop_sequence_cuts_it():
    pieces = stream(ChoiceText(Pieces()), [0, 3, 4, 7])
    assert "".join(pieces) == "Hello world!"
    cut = ChoiceText(Pieces(), stop=("STOP",))
    pieces = stream(cut, [0, 3, 4, 6, 7])
    assert "".join(pieces) == "Hello world" and cut.stopped
    assert cut.whole([0, 3, 4, 6, 7]) == "Hello world"


def test_a_tail_that_may_start_a_stop_sequence_waits():
    text = ChoiceText(Pieces(), stop=(" world",))
    assert text.push(0) == "Hello" and text.push(3) == ""  # " wor" may be the start of " world"
    assert text.push(4) == "" and text.stopped  # it was
    other = ChoiceText(Pieces(), stop=(" wormhole",))
    assert [other.push(i) for i in (0, 3, 4)] == ["Hello", "", " world"]  # it was not: sent whole


def test_a_rewritten_tail_does_not_silence_the_rest_and_the_whole_answer_is_exact():
    text = ChoiceText(Pieces())
    ids = [0, 1, 2, 3, 4]  # "Hello" " " "." → "Hello." (the space removed) " wor" "ld"
    pieces = stream(text, ids)
    assert "".join(pieces).endswith(" world")  # later pieces keep coming
    assert text.whole(ids) == "Hello. world"


def test_an_unfinished_character_waits_for_its_bytes():
    text = ChoiceText(Pieces())
    assert text.push(0) == "Hello" and text.push(5) == ""
