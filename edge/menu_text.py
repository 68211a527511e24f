"""Moved to :mod:`dangol_edge.web.formatting`; kept so older imports keep working."""

from .web.formatting import ago, format_price, greeting, house_menu, visible_picks

__all__ = ["ago", "format_price", "greeting", "house_menu", "visible_picks"]
