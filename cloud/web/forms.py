"""Flask-WTF forms of the dashboard (every POST carries a CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired, MultipleFileField
from wtforms import BooleanField, DecimalField, EmailField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, StopValidation, ValidationError

# the photo limits (8 MiB, 16 megapixels, pixels per byte) live with the decoding in dangol_cloud.web.photos
from dangol_cloud.web.photos import MAX_PHOTO_BYTES, MAX_PHOTO_PIXELS, PhotoError, checked_photo  # noqa: F401

#: Highest price of an item, in the café's currency (major units). A café item never costs more in any currency
#: (a whole-cake order in Vietnamese đồng or Indonesian rupiah is a few million), so a larger number is a typo;
#: and below it every price is a finite float carried to the cent by JSON, the ``catalogue/1`` protocol (which
#: refuses inf and NaN: one such item would stop every Publish) and the door screen's formatting.
MAX_PRICE = 10_000_000
PRICE_MESSAGE = f"Enter a price from 0 to {MAX_PRICE:,} (a finite number)."


def valid_image(form, field) -> None:
    """WTForms validator: the upload is a readable JPEG, PNG or WebP within the limits of
    :func:`dangol_cloud.web.photos.checked_photo`, which decodes it once; its stored form is kept as
    ``field.prepared_photo`` for the save (:func:`~dangol_cloud.web.photos.prepared_upload`), so the photo is never
    decoded a second time.

    Raises:
        ValidationError: naming what is wrong (too large, not an image, truncated/corrupt, too many pixels, a flat
            image compressed far more than a photo).
    """
    field.prepared_photo = None
    file = field.data
    if not file or not getattr(file, "filename", ""):
        return
    data = file.read(MAX_PHOTO_BYTES + 1)
    file.seek(0)
    try:
        field.prepared_photo = checked_photo(data)
    except PhotoError as exc:
        raise ValidationError(str(exc)) from None


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
           "StoreForm", "UploadForm", "finite_price", "item_form_class", "store_price_field"]


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


def store_price_field(store_id: str) -> str:
    """The item form's field name of the price at store ``store_id`` (``store_price_`` and the id's hex digits)."""
    return "store_price_" + store_id.replace("-", "")


def item_form_class(stores: list[tuple[str, str, str]]) -> type[ItemForm]:
    """:class:`ItemForm` with one optional price per store of ``stores`` (``(id, name, currency)``), named by
    :func:`store_price_field`, labelled "<store name> (<currency>)" and bounded as the catalogue price is (the
    currency's decimals and the errors' names are the view's: :mod:`dangol_cloud.web.catalogue`). Blank: the store
    gets the catalogue price if it sells in the catalogue's currency, else none."""
    bounds = NumberRange(min=0, max=MAX_PRICE, message=PRICE_MESSAGE)
    fields = {store_price_field(sid): DecimalField(f"{name} ({code})", places=2, render_kw={"max": MAX_PRICE},
                                                   validators=[Optional(), finite_price, bounds])
              for sid, name, code in stores}
    return type("StoreItemForm", (ItemForm,), fields)


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
