"""Flask-WTF forms of the dashboard (every POST carries a CSRF token)."""

from __future__ import annotations

import re

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired, MultipleFileField
from wtforms import BooleanField, DecimalField, EmailField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, StopValidation, ValidationError

#: Largest catalogue photo accepted: 8 MiB and 40 megapixels (a phone photo is ~12 MP; Pillow's own
#: decompression-bomb guard starts at ~89 MP).
MAX_PHOTO_BYTES = 8 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000
#: Highest price of an item, in the café's currency (major units). A café item never costs more in any currency
#: (a whole-cake order in Vietnamese đồng or Indonesian rupiah is a few million), so a larger number is a typo;
#: and below it every price is a finite float carried to the cent by JSON, the ``catalogue/1`` protocol (which
#: refuses inf and NaN: one such item would stop every Publish) and the door screen's formatting.
MAX_PRICE = 10_000_000
PRICE_MESSAGE = f"Enter a price from 0 to {MAX_PRICE:,} (a finite number)."


def valid_image(form, field) -> None:
    """WTForms validator: the upload is a readable JPEG, PNG or WebP within the size limits above.

    Raises:
        ValidationError: naming what is wrong (too large, not an image, truncated/corrupt, too many pixels).
    """
    file = field.data
    if not file or not getattr(file, "filename", ""):
        return
    from PIL import Image, UnidentifiedImageError

    data = file.read(MAX_PHOTO_BYTES + 1)
    file.seek(0)
    if len(data) > MAX_PHOTO_BYTES:
        raise ValidationError(f"the photo is larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MiB")
    import io

    too_large = (f"the photo has {{}} pixels; at most {MAX_PHOTO_PIXELS // 1_000_000} megapixels: "
                 f"export it smaller (the door screen shows it at most 800 pixels wide)")
    problem = None  # ValidationError is a ValueError: raised only outside the try, never re-labelled
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG", "WEBP"):
                problem = f"the photo is {image.format}, not JPEG, PNG or WebP"
            elif image.width * image.height > MAX_PHOTO_PIXELS:
                problem = too_large.format(f"{image.width}×{image.height} ({image.width * image.height / 1e6:.0f} MP)")
            else:
                image.load()  # decodes every pixel: a truncated or corrupt file fails here
    except Image.DecompressionBombError as exc:  # Pillow refuses to open it at all (> ~179 MP)
        size = re.search(r"(\d+) pixels", str(exc))
        problem = too_large.format(f"{int(size.group(1)) / 1e6:.0f} million" if size else "too many")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        problem = f"the photo cannot be read as an image ({type(exc).__name__})"
    if problem:
        raise ValidationError(problem)


def finite_price(form, field) -> None:
    """WTForms validator: the price is a finite number (``Infinity``, ``NaN`` are refused before the range check,
    which cannot compare a NaN).

    Raises:
        StopValidation: with :data:`PRICE_MESSAGE`.
    """
    value = field.data
    if value is not None and not value.is_finite():
        raise StopValidation(PRICE_MESSAGE)


__all__ = ["MAX_PRICE", "PRICE_MESSAGE", "ActionForm", "ConsentForm", "DeviceForm", "ItemForm", "LoginForm",
           "StoreForm", "UploadForm", "finite_price"]


def _choices(pairs: list[tuple[str, str]]) -> list:
    """(value, label) pairs as WTForms ``SelectChoice`` objects (WTForms >= 3.3; tuples before)."""
    try:
        from wtforms.fields.choices import SelectChoice
    except ImportError:  # WTForms < 3.3
        return pairs
    return [SelectChoice(value, label) for value, label in pairs]


class ActionForm(FlaskForm):
    """A button-only form (publish, retire, erase): just the CSRF token."""


class LoginForm(FlaskForm):
    """E-mail and password."""

    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired()])


class StoreForm(FlaskForm):
    """A new store: name and optional POS store code."""

    name = StringField("Store name", validators=[DataRequired(), Length(max=120)])
    ref = StringField("POS store code (optional)", validators=[Optional(), Length(max=64)])


class DeviceForm(FlaskForm):
    """A new edge device: its name."""

    name = StringField("Device name", validators=[DataRequired(), Length(max=120)],
                       render_kw={"placeholder": "Front door"})


class ItemForm(FlaskForm):
    """A catalogue item (price in the café's currency). ``ref`` is the POS code a till sends as a sale line's
    ``item``: blank keeps the current one (a new item's is made from the name); the view checks a typed one
    (:func:`dangol_cloud.web.catalogue_form.code_problem`)."""

    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    ref = StringField("POS code", validators=[Optional()],  # checked with the database: catalogue_form.code_problem
                      render_kw={"placeholder": "made from the name", "autocomplete": "off", "spellcheck": "false"})
    category = StringField("Category", validators=[Optional(), Length(max=80)],
                           render_kw={"placeholder": "Coffee, Tea, Pastry ..."})
    price = DecimalField("Price", places=2, render_kw={"max": MAX_PRICE},
                         validators=[Optional(), finite_price,
                                     NumberRange(min=0, max=MAX_PRICE, message=PRICE_MESSAGE)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    tags = StringField("Tags (comma-separated)", validators=[Optional(), Length(max=300)],
                       render_kw={"placeholder": "vegan, hot, oat milk"})
    photo = FileField("Photo", validators=[FileAllowed(["jpg", "jpeg", "png", "webp"], "JPEG, PNG or WebP only"),
                                           valid_image])
    available = BooleanField("Available today", default=True)


class ConsentForm(FlaskForm):
    """A customer's consent record: display name, who recorded it, consent text version."""

    display_name = StringField("Name shown on the display", validators=[DataRequired(), Length(max=120)])
    recorded_by = StringField("Consent recorded by", validators=[DataRequired(), Length(max=120)])
    text_version = StringField("Consent text version", validators=[DataRequired(), Length(max=40)])


class UploadForm(FlaskForm):
    """Purchase files (one, or Complete Journey's transactions + products [+ demographics]) and their format
    (``auto``: told from the headers, :func:`dangol_cloud.importers.detect_files`)."""

    file = MultipleFileField("Purchase files", validators=[FileRequired(), FileAllowed(["csv", "txt"], "a .csv file")],
                             render_kw={"accept": ".csv,.txt"})
    format = SelectField("Format", choices=_choices([("auto", "Detect from the files"),
                                                      ("csv", "Dangol CSV (customer, item, quantity, timestamp)"),
                                                      ("ta-feng", "Ta-Feng"),
                                                      ("completejourney", "Complete Journey (transactions + products)")]),
                         default="auto")
    store = SelectField("Store of these sales", choices=_choices([("", "No store (history)")]), default="",
                        validate_choice=False)
