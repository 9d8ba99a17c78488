//! Building each guest's bootstrap envelope.
