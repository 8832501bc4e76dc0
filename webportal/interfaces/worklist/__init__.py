"""The worklist app's pages (views, forms, urls)."""
