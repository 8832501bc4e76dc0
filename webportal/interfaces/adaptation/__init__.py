"""The adaptation app's pages (views, forms, urls)."""
