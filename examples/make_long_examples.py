"""Write the long-context examples: examples/long-context.jsonl and examples/long-document.jsonl.

    .venv/bin/python examples/make_long_examples.py           # (re)write both files
    .venv/bin/python examples/make_long_examples.py --check   # exit 1 if the files differ from what it writes

The texts are original prose assembled from the sentence material below with a seeded
random generator: no downloads, no quoted books, the same bytes on every run.

long-context.jsonl   the seed's long-context QA (seed.md section 8) at the size the issue asks
                     for: a ~6,400-word essay about rats and city cables, too long for the
                     8,192-token context, then the question "Why does the author call cables
                     'the vines of the city'?".
                     Line 1: `document` shape under `map_reduce` (answered from every part).
                     Line 2: the same passage and question as one `prompt` with no `fit`, so the
                     prompt default applies (`truncate`, head kept: the question goes first).
long-document.jsonl  a >= 30,000-token invented maintenance chronicle, "Summarise the document
                     in five bullet points.", under `map_reduce`.

The token counts are checked with the real tokenizer (sagebatch.domain.tokens) when it is importable.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LONG_CONTEXT = HERE / "long-context.jsonl"
LONG_DOCUMENT = HERE / "long-document.jsonl"

QUESTION = "Why does the author call cables 'the vines of the city'?"
SUMMARY_INSTRUCTION = "Summarise the document in five bullet points."
TARGET_WORDS = 6_400
DOCUMENT_MIN_TOKENS = 30_000
CONTEXT_TOKENS = 8_192

# --------------------------------------------------------------------------
# Shared vocabulary

PEOPLE = [
    "Dolores Ybarra, a splicer with twenty-two years on the night crew",
    "Teodor Marsh, who inspects conduit for the power company",
    "Annick Oyelaran, an exterminator who works the produce markets",
    "Rufus Kettleby, a retired subway signal maintainer",
    "Marisol Quintero, a fiber technician for a cable contractor",
    "Ignatius Pell, a building superintendent on the east side",
    "Wen Zhaoli, who repairs traffic-light controllers",
    "Beatrix Onwuachi, a field biologist who traps rats for a university study",
    "Casimir Dunleavy, a mechanic at a municipal bus depot",
    "Halvard Strand, a foreman of a manhole crew",
]
NAMES = [p.split(",")[0] for p in PEOPLE]
FIRST = [n.split()[0] for n in NAMES]
PLACES = [
    "a junction vault under the old fish market",
    "the service tunnel beneath the courthouse steps",
    "a transformer room behind a laundromat",
    "the cellar of a tenement built before the first electric lines",
    "a cable trench along the river drive",
    "the crawl space under a shuttered bakery",
    "a switch room at the end of a subway platform",
    "a manhole at the corner of two avenues with no shade",
    "the basement of a hospital annex",
    "a loading dock where the produce trucks idle at dawn",
    "the utility shaft of a forty-story office tower",
    "a parking garage whose lowest level floods every spring",
]
CABLES = [
    "a bundle of telephone pairs wrapped in lead",
    "a run of coaxial cable stapled along a joist",
    "a fat feeder cable in its oil-soaked jacket",
    "the thin yellow fiber that carries a bank's traffic",
    "a tangle of doorbell wire and thermostat leads",
    "a harness of car wiring coated in plant-based insulation",
    "a signal cable that tells a train when to stop",
    "a loop of low-voltage wire feeding a streetlight",
    "a braided ground strap bolted to a water main",
    "an abandoned telegraph line nobody has mapped in decades",
]
DAMAGE = [
    "stripped to bright copper in a dozen places",
    "chewed through so neatly it looked as if someone had used a file",
    "scored with paired grooves no wider than a grain of rice",
    "gnawed back to the shielding along a whole arm's length",
    "shortened by a hand's width where the jacket had been eaten away",
    "notched at regular intervals like a measuring tape",
    "hollowed out until the insulation hung in loose flaps",
    "bitten clean through, both ends blackened from the arc",
]
CONSEQUENCES = [
    "half a block went dark for an evening",
    "a hospital switched to its generators for six hours",
    "the trains on one line crawled at walking pace until morning",
    "a bank's trading floor lost its connection during the opening bell",
    "a family sat without heat through a January night",
    "the traffic lights along the avenue blinked red in every direction",
    "an elevator stopped between floors with a delivery cart inside",
    "a small fire smoldered in the insulation until a neighbor smelled it",
    "three hundred telephones fell silent at once",
    "the car would not start and the dealer blamed the battery first",
]
TIMES = [
    "on a wet night in November",
    "just after four in the morning",
    "during the first heat wave of the summer",
    "on the Sunday before a long weekend",
    "in the middle of a snowstorm",
    "an hour before the markets opened",
    "late on a Friday, when the crews were thin",
    "on a morning so cold that the manhole covers steamed",
]

# --------------------------------------------------------------------------
# The essay: fixed paragraphs plus themed, generated ones

TITLE = "The Vines of the City"

OPENING = (
    "For a year I followed the people who keep the wires of this city alive, and for the same year I "
    "followed the animals that try to eat them. I started out meaning to write about cables, about the "
    "copper and glass that carry our voices and our money and our light, and I ended up writing about "
    "rats. By the end I had stopped thinking of the two subjects as separate. Somewhere in my notebooks, "
    "on a page stained with the grease of a junction vault, I had begun to call the cables the vines of "
    "the city, and the name stayed with me. This essay is an attempt to explain why."
)

# The answer to the seed's question; placed about two thirds of the way in.
EXPLANATION = (
    "Here, then, is why I call the cables the vines of the city. A rat is a gnawing animal before it is "
    "anything else. Its front teeth never stop growing, so it must wear them down every day on whatever "
    "its world offers. In the fields and hedgerows where its ancestors lived, that meant stems, roots, "
    "bark and the long climbing vines that wrap every fence and tree. In the city the hedgerow is gone, "
    "but the vines are not: they have been replaced by wires. Cables climb the walls of every basement, "
    "hang in loops from every joist, run along every tunnel and twist together in every junction box, "
    "exactly the way creepers climb a trellis. To a rat a bundle of wire has the size, the shape, the "
    "give and the resistance of a plant stalk, and the soft insulation even smells a little of the "
    "vegetable oils some of it is made from. The rat is not attacking our machinery; it is doing what it "
    "would do in a thicket, following the vine and testing it with its teeth. The utility lines, the "
    "computer cables and the wiring harnesses of parked cars are the closest thing to a forest the "
    "animal has left, and it treats them as its forest. That is the whole of my metaphor, and the splicers "
    "I worked beside understood it at once."
)

CLOSING = (
    "On my last night with the crews we climbed out of a vault near the river just as the sky turned "
    "grey. Behind us, in the dark, a new length of cable ran along the wall, its jacket smooth and "
    "unmarked. Dolores Ybarra looked back at it the way a gardener looks at a fresh planting. Give it a "
    "month, she said, and something will come along to taste it. She did not say it bitterly. The city "
    "grows its vines, and the rats graze on them, and people like her walk the rows at night with a "
    "lamp and a knife, keeping the whole tangled garden alive for one more day."
)

ESSAY_THEMES: dict[str, dict[str, list[str]]] = {
    "teeth": {
        "open": [
            "Every rat carries the same problem in its mouth.",
            "The biology is simple enough to state in a sentence, and it explains more than it seems to.",
            "Beatrix Onwuachi keeps a jar of rat skulls on her desk to make the point.",
            "A zoologist once told me that a rat is a set of teeth with an animal attached.",
        ],
        "body": [
            "The four incisors at the front of the jaw grow by a few millimeters every week for as long as the animal lives.",
            "If a rat stops gnawing, its teeth curl past each other and eventually pierce the roof of its own mouth.",
            "The enamel sits only on the front face of each tooth, so gnawing wears the back faster and keeps the edge sharp as a chisel.",
            "Rats gnaw on wood, plastic, cinder block, soft metal and anything else that will yield a little under pressure.",
            "A laboratory rat given nothing hard to chew will grind its teeth against each other for hours at a time.",
            "The bite of an adult rat can exert a pressure that dents aluminum and splits the casing of a cheap lock.",
            "Gnawing is not the same as eating, and most of what a rat chews is never swallowed at all.",
            "Young rats learn what to chew partly by watching their mothers, and partly by trying everything once.",
            "The habit is so strong that rats in cages will gnaw through a bar they cannot possibly squeeze past.",
            "A tooth that is worn against something with a little give, like a stem or a rope, wears evenly and does not chip.",
        ],
    },
    "history": {
        "open": [
            "The alliance between rats and people is older than any wire.",
            "It helps to remember where these animals came from.",
            "Rats did not invent the city, but they moved into it almost as soon as it was built.",
            "The brown rat arrived here on ships, like most of us.",
        ],
        "body": [
            "The brown rat seems to have spread out of the grasslands of northern Asia, following grain stores along the old trade routes.",
            "In its first homes the brown rat lived in burrows under hedges and riverbanks, gnawing roots and the stalks of climbing plants.",
            "Sailing ships carried it to every port, where it moved from the holds into the warehouses and from the warehouses into the cellars.",
            "The earliest city ordinances I could find that mention rats are about grain, not wires, because there were no wires yet.",
            "When the first telegraph lines went underground, the engineers complained within a year about animals in the ducts.",
            "Old repair ledgers describe lead-sheathed cable chewed open by rats as early as the eighteen-nineties.",
            "Every new layer of the city, from gas pipes to fiber, has offered the animals a new set of tunnels to travel and new material to test.",
            "A rat does not need the city to be designed for it; it only needs the city to be warm, full of food and full of hollow spaces.",
            "The animals that live under our streets today are descended from the ones that lived under the wharves two centuries ago.",
            "Historians of public health tend to write about rats and plague, but the quieter story is about rats and infrastructure.",
        ],
    },
    "crews": {
        "open": [
            "The people who repair the damage rarely see the culprits.",
            "I spent most of my nights underground with the crews.",
            "Night work has its own rhythm, and I learned it slowly.",
            "The crews have a vocabulary for rat damage that I have not found in any manual.",
        ],
        "body": [
            "{person}, took me down to {place} {time}, where we found {cable} {damage}.",
            "{first} showed me how to read the marks: paired grooves mean teeth, a single clean cut means a careless contractor.",
            "Most of the crews carry a roll of steel mesh in the truck, because a splice wrapped in mesh lasts longer than a bare one.",
            "{first} said that in a bad year the crew repairs the same few blocks of cable four or five times.",
            "The trucks smell of diesel, coffee and the sweet tar of splicing compound.",
            "Nobody on the crews hates the rats, exactly; they talk about them the way farmers talk about weather.",
            "When the repair was finished, {first} tapped the new jacket and said that it would taste good to somebody before spring.",
            "A splice done at three in the morning by flashlight is still expected to last thirty years.",
            "{person}, keeps a photograph of the worst damage the crew ever saw taped inside a locker door.",
            "The crews log every outage, and in the logs the word rodent appears far more often than the word lightning.",
            "{first} told me that the animals favor the cables that run warm, which are usually the ones carrying the most current.",
            "We found droppings, a nest of shredded insulation and a neat stack of sunflower husks on a shelf in {place}.",
        ],
    },
    "outages": {
        "open": [
            "The costs add up in ways that are easy to miss.",
            "An outage caused by a rat looks, at first, like any other outage.",
            "I began to collect stories of failures that could be traced to teeth.",
            "Engineers do not like to admit how much of their work is undone by an animal that weighs less than a pound.",
        ],
        "body": [
            "{time}, {cable} was found {damage}, and {consequence}.",
            "When the crews finally found the fault, it was {cable} {damage}.",
            "The usual sequence is short: a rat gnaws through the insulation, two conductors touch, and {consequence}.",
            "One insurer told me that a large share of the fires it cannot otherwise explain start in chewed wiring.",
            "A single gnawed cable in {place} once meant that {consequence}.",
            "The repair itself may take an hour; finding the damage can take the rest of the night.",
            "Nobody counts these failures in one place, which is part of why the problem is so easy to underestimate.",
            "Telephone companies learned long ago to run their most important lines in steel, and they still find teeth marks on the joints.",
            "Car owners usually discover the problem when the engine will not start, and the repair bill runs to several hundred dollars.",
            "Many modern cars use insulation made partly from soy or other plant oils, which some mechanics believe makes it more attractive to gnawing animals.",
        ],
    },
    "behavior": {
        "open": [
            "To understand the damage, you have to watch the animals move.",
            "Rats are creatures of routine.",
            "Beatrix Onwuachi has spent years filming rats in basements, and her footage changed how I saw them.",
            "The animals are cautious, and they are patient.",
        ],
        "body": [
            "A rat prefers to travel along an edge, with a wall on one side, and the edges of a basement are exactly where the cables run.",
            "Rats follow the same paths night after night until the grease of their fur leaves a dark smear along the route.",
            "They climb well, using a cable as a ladder from the floor to the joists and from the joists to the next room.",
            "In her recordings, a rat reaching a cable often stops, sniffs it, and then gives it a few exploratory bites before moving on.",
            "The bites are not meals; they are tests, the same tests a rat would give a root or a branch it met in a field.",
            "Where cables pass through a hole in a wall, rats widen the gap with their teeth and use it as a door.",
            "Nests are built from whatever is soft and close, and shredded insulation makes a warm bed.",
            "A rat can squeeze through a gap the width of a thumb, and every conduit that is not sealed is an open road.",
            "Young males, pushed out of crowded colonies, wander farthest and do the most exploratory gnawing.",
            "The animals are neophobic, wary of new objects, but a cable that has hung in the same place for years is simply part of the landscape.",
        ],
    },
    "remedies": {
        "open": [
            "Everyone I met had a theory about how to stop it.",
            "There is no shortage of products that promise to keep rats off wires.",
            "The remedies tell you a lot about how people think about the problem.",
            "Annick Oyelaran is skeptical of almost every cure she has been sold.",
        ],
        "body": [
            "Some cable makers blend bitter compounds or capsaicin into the jacket, and the rats seem to mind it for a season or two.",
            "Steel armor works, but it is heavy, expensive and hard to pull through old conduit.",
            "Ultrasonic repellers are sold in every hardware store, and {first} has found nests built right beside them.",
            "The most reliable fix is dull: seal the holes, clean up the food, and give the animals fewer reasons to be there.",
            "Poison kills the rats in a building, but the empty territory fills again within weeks from the blocks around it.",
            "{first} prefers traps, because a trap tells her where the animals were traveling.",
            "A few engineers are experimenting with sleeves that are too hard and too smooth for a tooth to grip.",
            "Mechanics wrap wiring harnesses in a tape laced with hot pepper, and some owners swear by it.",
            "No remedy lasts as long as the cable it protects, which is why the crews keep a roll of mesh in every truck.",
            "The city's own guidance on rodents devotes three pages to garbage and a single sentence to wiring.",
        ],
    },
    "garden": {
        "open": [
            "The more time I spent underground, the more the city looked like a garden to me.",
            "It is hard to stand in a cable vault and not think of plants.",
            "I am not the first person to notice the resemblance.",
            "Walk through any old basement with a lamp and look up.",
        ],
        "body": [
            "Wires branch where the service splits, and they thicken near the trunk the way a stem thickens near the root.",
            "Old installations grow by accretion, each new owner adding a run beside the last until the wall is covered.",
            "In {place} the cables hung in loops from hooks along the ceiling, like hops trained along a wire.",
            "{first} called a dense junction a thicket and meant it as a technical term.",
            "Some of the lines in the oldest vaults are dead, abandoned and never removed, like dry stalks left standing after a harvest.",
            "The city feeds on the current that runs through these stems, as surely as a plant feeds on the sap in its own.",
            "Splicers graft one length to another, wrap the joint and seal it, with a care that would be familiar to an orchard keeper.",
            "From the street you never see any of it, only the lamps and screens and signals that the hidden growth keeps alive.",
        ],
    },
}
THEME_ORDER = ["history", "teeth", "crews", "behavior", "outages", "garden", "remedies", "crews", "outages", "behavior"]


def _fill(template: str, rnd: random.Random) -> str:
    index = rnd.randrange(len(PEOPLE))
    return template.format(
        person=PEOPLE[index],
        first=FIRST[index],
        place=rnd.choice(PLACES),
        cable=rnd.choice(CABLES),
        damage=rnd.choice(DAMAGE),
        consequence=rnd.choice(CONSEQUENCES),
        time=rnd.choice(TIMES).capitalize() if template.startswith("{time}") else rnd.choice(TIMES),
    )


class _Deck:
    """Sentences of one theme dealt in shuffled rounds: none repeats before all were used."""

    def __init__(self, cards: list[str], rnd: random.Random) -> None:
        self.cards, self.rnd, self.left = cards, rnd, []

    def deal(self, k: int) -> list[str]:
        dealt: list[str] = []
        while len(dealt) < k:
            if not self.left:
                self.left = [c for c in self.cards if c not in dealt]
                self.rnd.shuffle(self.left)
            dealt.append(self.left.pop())
        return dealt


def _paragraph(decks: dict[str, _Deck], rnd: random.Random, opening: bool) -> str:
    sentences = decks["open"].deal(1) if opening else []
    sentences += decks["body"].deal(rnd.randint(4, 7))
    return " ".join(_fill(s, rnd) for s in sentences)


def _words(paragraphs: list[str]) -> int:
    return sum(len(p.split()) for p in paragraphs)


def make_passage(seed: int = 1) -> str:
    """About TARGET_WORDS words: opening, themed paragraphs, the explanation two thirds in, closing."""
    rnd = random.Random(seed)
    fixed = _words([TITLE, OPENING, EXPLANATION, CLOSING])
    decks = {name: {part: _Deck(cards, rnd) for part, cards in theme.items()} for name, theme in ESSAY_THEMES.items()}
    body: list[str] = []
    step = 0
    while True:
        theme = decks[THEME_ORDER[step % len(THEME_ORDER)]]
        count = rnd.randint(2, 4)
        block = [_paragraph(theme, rnd, opening=(i == 0)) for i in range(count)]
        if fixed + _words(body + block) > TARGET_WORDS:
            # Close the gap with whole paragraphs, then whole sentences, of this block.
            for paragraph in block:
                missing = TARGET_WORDS - fixed - _words(body)
                if len(paragraph.split()) <= missing:
                    body.append(paragraph)
                    continue
                tail: list[str] = []
                for sentence in paragraph.split(". "):
                    if len(" ".join(tail + [sentence]).split()) > missing:
                        break
                    tail.append(sentence)
                if tail:
                    body.append(". ".join(tail).rstrip(".") + ".")
                break
            break
        body += block
        step += 1
    at = (2 * len(body)) // 3
    paragraphs = [TITLE, OPENING, *body[:at], EXPLANATION, *body[at:], CLOSING]
    return "\n\n".join(paragraphs)


# --------------------------------------------------------------------------
# The long document: a year's chronicle of an invented city's cable department

DISTRICTS = [
    "Marrowgate",
    "Saltreach",
    "Fennick Hill",
    "the Tanneries",
    "Lower Quay",
    "Orchard Row",
    "Bellweather",
    "Copperfield Yards",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
ASSETS = [
    "feeder",
    "service drop",
    "signal pair",
    "fiber trunk",
    "streetlight loop",
    "traffic controller lead",
    "pump-station cable",
    "tram catenary feed",
]
CAUSES = [
    "rodent gnawing",
    "water ingress",
    "a contractor's excavator",
    "age and heat",
    "rodent gnawing",
    "a failed splice",
    "rodent gnawing",
    "frost heave",
]
ACTIONS = [
    "replaced {n} meters of cable and sealed the duct ends with steel wool and mortar",
    "re-spliced the joint and wrapped it in stainless mesh",
    "pulled a new run through the spare conduit and abandoned the old one in place",
    "installed a bitter-coated sleeve over {n} meters of exposed jacket",
    "pumped out the vault, dried the terminations and re-torqued every lug",
    "cut out the damaged section, tested the remaining {n} meters and returned the line to service",
]
DOC_SENTENCES = [
    "The district engineer noted that complaints from {district} rose sharply after the market moved its loading bays.",
    "Crews reported fresh gnaw marks on {n} separate terminations during routine inspection in {district}.",
    "A survey of {n} vaults found droppings or nesting material in more than a third of them.",
    "The budget line for emergency splicing was exhausted by the middle of the month.",
    "Night crews were increased from {k} to {k2} teams while the backlog was cleared.",
    "The pest-control contractor set {n} traps along the main duct bank and recorded catches weekly.",
    "Residents of {district} were advised to keep refuse in sealed bins on collection nights.",
    "An audit of older installations showed that {n} percent of sealed duct ends had been reopened by animals.",
    "Engineers trialled a hard polymer sleeve on {n} meters of service cable and will report after a full year.",
    "The average time to locate a rodent fault was {k} hours, against {k2} hours for other causes.",
    "Insurance claims for fire damage linked to chewed wiring were forwarded to the legal office.",
    "A training session for new splicers covered how to distinguish tooth marks from tool damage.",
    "The department met the transit authority to coordinate repairs on shared duct routes in {district}.",
    "Temperature loggers showed that the most damaged cables were also among the warmest in the vault.",
    "Stock of stainless mesh fell below the reorder level twice and an emergency purchase was approved.",
    "The public works committee asked for a map of repeat faults by block, which is appended to the annual report.",
]


def _chronicle_paragraph(rnd: random.Random, month: str) -> str:
    sentences = []
    for sentence in rnd.sample(DOC_SENTENCES, k=rnd.randint(3, 6)):
        k = rnd.randint(2, 9)
        sentences.append(sentence.format(district=rnd.choice(DISTRICTS), n=rnd.randint(3, 480), k=k, k2=k + rnd.randint(1, 5)))
    return " ".join(sentences)


def _log_entry(rnd: random.Random, month: str) -> str:
    day = rnd.randint(1, 28)
    ref = f"{rnd.choice('ABCDEFGH')}{rnd.randint(10, 99)}-{rnd.randint(100, 999)}"
    action = rnd.choice(ACTIONS).format(n=rnd.randint(2, 140))
    hours = rnd.randint(1, 14)
    return (
        f"- {day} {month}, job {ref}, {rnd.choice(DISTRICTS)}: {rnd.choice(ASSETS)} fault, cause {rnd.choice(CAUSES)}; "
        f"crew {action}. Customers affected: {rnd.randint(0, 2400)}. Time to restore: {hours} h."
    )


def make_document(seed: int = 2, min_chars: int = 112_000) -> str:
    rnd = random.Random(seed)
    parts = [
        "The Underground Ledger: a year of cable repairs in the city of Marrowgate",
        "This chronicle was compiled from the daily logs of the municipal cable department. Each month "
        "gives a short account of the work, followed by a selection of the repair log. The city and its "
        "districts are invented; the patterns in the logs are the ones every utility will recognise.",
    ]
    size = sum(len(p) for p in parts)
    year = 0
    while size < min_chars:
        for month in MONTHS:
            block = [f"{month}, year {year + 1}"]
            block += [_chronicle_paragraph(rnd, month) for _ in range(rnd.randint(2, 4))]
            block += ["\n".join(_log_entry(rnd, month) for _ in range(rnd.randint(6, 12)))]
            parts += block
            size += sum(len(p) for p in block)
            if size >= min_chars:
                break
        year += 1
    parts.append(
        "Summary of the year: rodent gnawing remained the largest single cause of cable faults, repeat "
        "faults clustered around food markets and warm duct banks, sealing and mesh outperformed "
        "repellents, and the department asks for a standing budget for duct sealing."
    )
    return "\n\n".join(parts)


# --------------------------------------------------------------------------
# Records and files


def records() -> dict[Path, list[dict]]:
    passage = make_passage()
    return {
        LONG_CONTEXT: [
            {
                "id": "seed-long-context-qa",
                "instruction": QUESTION,
                "document": passage,
                "fit": {"strategy": "map_reduce"},
            },
            {
                # No `fit`: a prompt that does not fit is truncated, keeping the head,
                # so the question goes first.
                "id": "seed-long-context-qa-as-prompt",
                "prompt": f"Read the passage below, then answer this question: {QUESTION}\n\n{passage}",
            },
        ],
        LONG_DOCUMENT: [
            {
                "id": "long-document-summary",
                "instruction": SUMMARY_INSTRUCTION,
                "document": make_document(),
                "fit": {"strategy": "map_reduce"},
            }
        ],
    }


def render(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def measure(files: dict[Path, list[dict]]) -> None:
    """Print word and token counts; fail if an example is not as long as it must be."""
    try:
        sys.path.insert(0, str(HERE.parent / "shared"))
        from sagebatch.domain.tokens import get_tokenizer
    except ImportError:  # pragma: no cover - the venv has it
        print("sagebatch.domain.tokens not importable: token counts not checked", file=sys.stderr)
        return
    tok = get_tokenizer()
    passage = files[LONG_CONTEXT][0]["document"]
    document = files[LONG_DOCUMENT][0]["document"]
    words, passage_tokens, document_tokens = len(passage.split()), tok.count(passage), tok.count(document)
    print(f"passage   {words:,} words, {passage_tokens:,} tokens (BOS included)")
    print(f"document  {len(document.split()):,} words, {document_tokens:,} tokens (BOS included)")
    assert abs(words - TARGET_WORDS) <= 100, words
    assert passage_tokens > CONTEXT_TOKENS, passage_tokens
    assert document_tokens >= DOCUMENT_MIN_TOKENS, document_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    files = records()
    measure(files)
    stale = []
    for path, lines in files.items():
        data = render(lines)
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(path.name)
        else:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(HERE.parent)} ({len(data):,} bytes)")
    if stale:
        print(f"out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
