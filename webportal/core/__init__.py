"""The bottom layer of the portal: what every app shares and none owns. The label vocabulary
(labels), the one error base (errors); no models, no Django app."""
