pub use rlzero_model as model;
